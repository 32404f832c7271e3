"""``python -m bioprop ...``: the same command line as ``bioprop ...`` (:func:`bioprop.cli.main`)."""

from bioprop.cli import main

main()
