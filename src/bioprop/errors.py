"""Errors that end a command with a one-line message instead of a traceback."""

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


class BioPropError(Exception):
    """Bad input from the user (file, option, flag). The CLI prints the message and exits with code 2."""

    exit_code = 2


class DivergenceError(BioPropError):
    """A non-finite loss or update, or an unstable rule setting. The CLI exits with code 3."""

    exit_code = 3
