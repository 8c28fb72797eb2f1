"""The l2bg command line: `l2bg run` learns a task stream, `l2bg explain DIR` shows why each
task bound where it did and what grew, `l2bg search` searches grow sequences for the best
accuracy/size trade-off, `l2bg rsa` compares the layers of networks from activations on disk.
`l2bg COMMAND --help` lists each command's options; docs/design.md defines every term."""

from __future__ import annotations

import argparse
import sys

from l2bg.base.errors import L2BGError, one_line_warnings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from l2bg.cli.explain import add_explain_parser
    from l2bg.cli.options import HelpFormatter
    from l2bg.cli.rsa import add_rsa_parser
    from l2bg.cli.run import add_run_parser
    from l2bg.cli.search import add_search_parser

    p = argparse.ArgumentParser(prog="l2bg", description=__doc__,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    add_explain_parser(sub)
    add_search_parser(sub)
    add_rsa_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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

