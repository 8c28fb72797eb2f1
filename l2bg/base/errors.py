"""One exception type for bad input: its message is a single line naming the problem and the fix.
One warning type for what l2bg repaired on its own (a damaged cache entry set aside, a torn journal
line): the command line prints it as one ``l2bg: warning:`` line."""

import warnings


class L2BGError(ValueError):
    """Bad input or configuration; the CLI prints the message on one line and exits non-zero."""


class L2BGWarning(UserWarning):
    """Something was damaged and l2bg set it aside and recovered; the message says what and
    where the damaged copy now lies."""


def one_line(exc: BaseException, limit: int | None = 240) -> str:
    """An exception's message on one line (white space folded), at most ``limit`` characters;
    its type name when the message is empty."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def warn(message: str) -> None:
    """Emit one :class:`L2BGWarning` (one line)."""
    warnings.warn(" ".join(message.split()), L2BGWarning, stacklevel=2)


def one_line_warnings() -> None:
    """Print L2BGWarnings as ``l2bg: warning: MESSAGE`` (the command line's format); other
    warnings keep Python's."""
    show = warnings.showwarning
    if getattr(show, "_l2bg", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, L2BGWarning):
            import sys

            print(f"l2bg: warning: {message}", file=file or sys.stderr, flush=True)
            return
        show(message, category, filename, lineno, file, line)

    showwarning._l2bg = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
