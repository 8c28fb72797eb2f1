"""One exception type for bad input: its message is a single line naming the problem and the fix.
:class:`ParamError` is the one for a bad value of a named parameter: the core names the parameter
(``num_tasks``), the command line the flag (``--tasks``, one table in :mod:`l2bg.cli.flags`).
One warning type for what l2bg repaired on its own (a damaged cache entry set aside, a torn journal
line): the command line prints it as one ``l2bg: warning:`` line."""

import re
import warnings
from collections.abc import Mapping


class L2BGError(ValueError):
    """Bad input or configuration; the CLI prints the message on one line and exits non-zero."""


class ParamError(L2BGError):
    """A bad value of a named parameter. ``template`` names each parameter of ``params`` as
    ``{name}``: the message (``str``) shows the Python name, :meth:`render` any other name for it
    (the command line's flag). ``param`` is the first, the parameter at fault."""

    def __init__(self, template: str, *params: str) -> None:
        self.template, self.params = template, tuple(params)
        super().__init__(self.render())

    @property
    def param(self) -> str | None:
        return self.params[0] if self.params else None

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with every ``{param}`` replaced by ``names[param]`` (default: its own
        name)."""
        text = self.template
        for p in self.params:
            text = text.replace("{" + p + "}", (names or {}).get(p, p))
        return text

    def __reduce__(self):  # a worker process hands it over with its parameters
        return (type(self), (self.template, *self.params))


def params_in(label: str) -> tuple[str, ...]:
    """The ``{param}`` placeholders of a label that code passes down (``"{out}"``): the
    parameters of the :class:`ParamError` that names it."""
    return tuple(dict.fromkeys(re.findall(r"\{([a-z_][a-z0-9_]*)\}", label)))


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
