"""`wanflow lora inspect|convert`: what a LoRA file holds, and the same LoRA in another dialect."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanflow.errors import WanflowError

#: The dialects `convert --format` writes (kept here so `--help` needs no torch).
FORMATS = ("diffsynth", "comfyui", "diffusers", "musubi", "longcat")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="inspect LoRA files and convert them between dialects")
    actions = p.add_subparsers(dest="lora_action", metavar="ACTION", required=True)
    q = actions.add_parser("inspect", help="dialect, modules changed by kind, ranks, alphas, the model it fits")
    q.add_argument("file", type=Path)
    q.set_defaults(func=cmd_inspect)
    q = actions.add_parser("convert", help="rewrite a LoRA in another dialect (exactly the same deltas)")
    q.add_argument("input", type=Path)
    q.add_argument("output", type=Path)
    q.add_argument("--format", required=True, choices=FORMATS, help="the dialect to write")
    q.add_argument("--base-model", help="record this base model in the header (default: read from shapes)")
    q.add_argument("--recipe-digest", help="record the digest of the recipe that made the LoRA")
    q.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    q.set_defaults(func=cmd_convert)


def cmd_inspect(args: argparse.Namespace) -> int:
    from wanflow.lora.describe import render, summarize
    from wanflow.lora.read import read_lora

    print(f"{args.file}")
    print(render(summarize(read_lora(args.file))))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from wanflow.lora.read import read_lora
    from wanflow.lora.write import write_lora

    if args.output.exists() and not args.force:
        raise WanflowError(f"{args.output}: exists; choose another path or pass --force to overwrite it.")
    lora = read_lora(args.input)
    write_lora(lora, args.output, args.format, base_model=args.base_model, recipe_digest=args.recipe_digest)
    written = read_lora(args.output)
    if set(written.deltas) != set(lora.deltas):  # a bug, not the user's: say so loudly
        raise RuntimeError(f"{args.output}: reading it back gives other parameters than {args.input}")
    print(f"wrote {args.output}: {len(lora.deltas)} deltas, {lora.dialect} -> {args.format}")
    if lora.unread:
        print(f"warning: {len(lora.unread)} keys of {args.input} could not be read and are not in "
              f"{args.output}:", file=sys.stderr)
        for key in lora.unread:
            print(f"  {key}: {lora.reasons.get(key, 'not read')}", file=sys.stderr)
    return 0
