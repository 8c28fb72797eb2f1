"""One exception type for bad input: its message is a single line naming the problem and the fix."""


class L2BGError(ValueError):
    """Bad input or configuration; the CLI prints the message on one line and exits non-zero."""
