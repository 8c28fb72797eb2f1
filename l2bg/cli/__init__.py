"""The l2bg command line: `l2bg run` learns a task stream, `l2bg explain DIR` shows why each
task bound where it did and what grew, `l2bg search` searches grow sequences for the best
accuracy/size trade-off, `l2bg rsa` compares the layers of networks from activations on disk.
`l2bg COMMAND --help` lists each command's options; docs/design.md defines every term."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from l2bg.base.errors import L2BGError, one_line_warnings

__all__ = ["COMMANDS", "build_parser", "main"]


#: The commands, in the order ``l2bg --help`` lists them.
COMMANDS = ("run", "explain", "search", "rsa")


class _Listed(Exception):
    """Raised by :class:`_ListOnly` once a command's name and summary are in the parser."""


class _ListOnly:
    """Sub-parsers that only list a command: its ``add_parser`` call (name, one-line help) is
    passed on, and the rest of the command's set-up, which imports its registries (torch), is
    cut short."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.sub.add_parser(name, help=kwargs.get("help"))
        raise _Listed


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``l2bg`` parser. With ``command``, only that command gets its options; the others
    are listed with their one-line help (``l2bg --help`` imports no torch)."""
    from l2bg.base.version import __version__
    from l2bg.cli.explain import add_explain_parser
    from l2bg.cli.options import HelpFormatter
    from l2bg.cli.rsa import add_rsa_parser
    from l2bg.cli.run import add_run_parser
    from l2bg.cli.search import add_search_parser

    adders = {"run": add_run_parser, "explain": add_explain_parser,
              "search": add_search_parser, "rsa": add_rsa_parser}

    p = argparse.ArgumentParser(prog="l2bg", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            adders[name](sub if command in (None, name) else _ListOnly(sub))
        except _Listed:
            pass
    return p


def _command(argv: list[str]) -> str | None:
    """The command named on the command line (its first word), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    one_line_warnings()
    try:
        return args.func(args)
    except L2BGError as exc:
        from l2bg.cli.flags import message

        print(f"l2bg: error: {message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("l2bg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

