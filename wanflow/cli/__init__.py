"""The `wanflow` command line: parse arguments, set up logging, dispatch, map errors to exit codes.

Exit codes: 0 success, 2 a problem the user can fix (printed as a message, no traceback),
1 a bug in wanflow (printed with its traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from wanflow import __version__
from wanflow.errors import WanflowError

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanflow", description="Declarative, cached runs of the Wan video models.")
    parser.add_argument("--version", action="version", version=f"wanflow {__version__}")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every engine event too (debug)")
    parser.add_argument("--no-plugins", action="store_true", help="ignore installed third-party plugins")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from wanflow.cli import cache_cmds, engine_cmds, lora_cmds, recipe_cmds

    recipe_cmds.register(sub)
    engine_cmds.register(sub)
    cache_cmds.register(sub)  # `cache calibrate` joins the engine's `cache` command
    lora_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from wanflow import logs

    logs.configure(json=args.log_json, level=logs.level_for(
        verbose=args.verbose, quiet=getattr(args, "quiet", False), json=args.log_json))
    if args.no_plugins:
        os.environ["WANFLOW_NO_PLUGINS"] = "1"
    try:
        return int(args.func(args) or EXIT_OK)
    except WanflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: show everything needed to report it
        traceback.print_exc()
        print(f"\nwanflow {__version__} hit an internal error (above); please report it.", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
