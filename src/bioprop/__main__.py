"""The ``bioprop`` command (the console script) and ``python -m bioprop``: :func:`bioprop.cli.main`, reached through
:func:`launch`, which answers Ctrl-C during the seconds that importing torch takes as the command line does
afterwards: one line and exit code 130, no traceback."""

import sys

from bioprop.errors import EXIT_INTERRUPTED


def launch() -> None:
    """Import the command line (torch with it), then run it; Ctrl-C while importing is ``bioprop: interrupted``."""
    try:
        from bioprop.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("bioprop: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    main()


if __name__ == "__main__":
    launch()
