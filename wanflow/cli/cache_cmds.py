"""`wanflow cache calibrate RECIPE`: fit a step cache's values on the model the recipe runs.

It joins the engine's `wanflow cache stats|gc|verify|clear` command as one more action (the
cache there is the store of step outputs; this one is the denoise step cache, but users look for
both under "cache"). The runs use the recipe's own model, LoRAs, solver, steps, size, guidance
and seed, one run per prompt; see docs/step-cache.md, "Calibrating".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wanflow.errors import EngineError, RecipeError, display_path

#: Runs when --runs is not given: a steadier fit than one prompt, minutes rather than hours.
DEFAULT_RUNS = 4


def register(sub: Any) -> None:
    """Add `calibrate` to the `cache` command registered by the engine's commands."""
    cache = sub.choices["cache"]
    action = next(a for a in cache._actions if a.dest == "action")
    action.choices = (*action.choices, "calibrate")
    cache.add_argument("recipe", nargs="?", metavar="RECIPE", help="with calibrate: the recipe TOML file")
    cache.add_argument("--prompts", metavar="FILE", help="with calibrate: more prompts, one a line "
                       "(blank lines and lines starting with # are skipped)")
    cache.add_argument("--runs", type=int, metavar="N",
                       help=f"with calibrate: sampling runs, one prompt each (default {DEFAULT_RUNS})")
    cache.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="with calibrate: override a recipe key, e.g. sampler.steps=30 (repeatable)")
    cache.add_argument("--out", metavar="FILE", help="with calibrate: also write the TOML fragment here")
    engine_cache = cache.get_default("func")
    cache.set_defaults(func=lambda args: cmd_calibrate(args) if args.action == "calibrate" else
                       _engine_cache(engine_cache, args))


def _engine_cache(engine_cache: Any, args: argparse.Namespace) -> int:
    """stats, gc, verify, clear: the engine's command, refusing what only calibrate takes."""
    if args.recipe is not None:
        raise EngineError(f"wanflow cache {args.action} takes no recipe ({args.recipe}); "
                          "did you mean `wanflow cache calibrate RECIPE`?")
    given = [f"--{name}" for name in ("prompts", "runs", "set", "out") if getattr(args, name) not in (None, [])]
    if given:
        raise EngineError(f"wanflow cache {args.action}: {', '.join(given)} only go with "
                          "`wanflow cache calibrate RECIPE`; remove them")
    return engine_cache(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate, print the fragment, and write it to --out when given."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.events import Bars
    from wanflow.steps.calibrate import calibrate
    from wanflow.steps.calibrate_fragment import fragment

    if args.recipe is None:
        raise EngineError("wanflow cache calibrate needs a recipe: wanflow cache calibrate RECIPE.toml")
    resolved, sets = _recipe(args.recipe, tuple(args.set))
    runs = DEFAULT_RUNS if args.runs is None else args.runs
    prompts = _prompts(resolved.values["prompt.text"], args.prompts, runs)
    with Cache() as cache:
        planned = _plans(args.recipe, sets, prompts, cache)
        result = calibrate([(prompt, plan) for prompt, plan, _ in planned], cache, Bars())
    text = fragment(result, resolved.values["sampler.cache.mode"], planned[0][2])
    if args.out:
        _write(Path(args.out), text)
    sys.stdout.write(text)
    return 0


def _recipe(path: str, sets: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """The validated recipe, checked for calibration, and the --set items every run takes: the
    user's, a seed drawn once when the recipe has none, and unbatched guidance (so that the
    conditional and unconditional passes are recorded apart; the numbers are the same)."""
    from wanflow.recipe import load_recipe
    from wanflow.steps.calibrate import check_calibratable

    if not Path(path).is_file():
        raise EngineError(f"recipe {path} does not exist: check the path")
    resolved = load_recipe(path, sets=sets)
    check_calibratable(resolved)
    if resolved.values["sampler.seed"] is None:
        from wanflow.sampling import draw_seed

        sets = (*sets, f"sampler.seed={draw_seed()}")
    if resolved.values["sampler.cfg_merge"]:
        sets = (*sets, "sampler.cfg_merge=false")
    return resolved, sets


def _prompts(own: str, file: str | None, runs: int) -> list[str]:
    """The recipe's prompt, then the file's lines (or the built-in list), the first ``runs``."""
    from wanflow.steps.calibrate import DEFAULT_PROMPTS

    if runs < 1:
        raise RecipeError(f"--runs {runs}: a calibration needs at least one run (more prompts give a "
                          f"steadier fit; the default is {DEFAULT_RUNS})")
    more = DEFAULT_PROMPTS if file is None else _read_prompts(Path(file))
    prompts = list(dict.fromkeys([own, *more]))  # in order, each prompt once
    if runs > len(prompts):
        source = f"--prompts {display_path(file)}" if file else "the built-in list"
        raise RecipeError(f"--runs {runs}: only {len(prompts)} distinct prompts (the recipe's and "
                          f"{source}'s): add lines to a prompts file (--prompts FILE) or lower --runs")
    return prompts[:runs]


def _read_prompts(path: Path) -> list[str]:
    """The prompts of a text file, one a line; an unreadable or empty file is refused."""
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EngineError(f"--prompts {shown}: no such file; give a text file with one prompt a line") from None
    except IsADirectoryError:
        raise EngineError(f"--prompts {shown}: is a folder; give a text file with one prompt a line") from None
    except UnicodeDecodeError:
        raise EngineError(f"--prompts {shown}: not UTF-8 text; give a text file with one prompt a line") from None
    except OSError as exc:
        raise EngineError(f"--prompts {shown}: cannot be read ({exc.strerror})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EngineError(f"--prompts {shown}: holds no prompt (only blank or # lines); write one prompt a line")
    return prompts


def _plans(path: str, sets: tuple[str, ...], prompts: list[str], cache: Any) -> list[tuple[str, Any, Any]]:
    """(prompt, plan, resolved values) of each run: the recipe with its prompt replaced, planned
    by its family's pipeline as `wanflow run` plans it. Refused before any model loads when the
    schedule is too short to fit."""
    from wanflow.engine.runner import plan_job
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe
    from wanflow.steps.calibrate import check_enough_steps

    runs = []
    for prompt in prompts:
        resolved = load_recipe(path, sets=(*sets, f"prompt.text={json.dumps(prompt, ensure_ascii=False)}"))
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        if not runs:
            check_enough_steps(plan, len(prompts), str(resolved.path))
        runs.append((prompt, plan, resolved.values))
    return runs


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EngineError(f"--out {display_path(path)}: cannot be written ({exc.strerror})") from None
