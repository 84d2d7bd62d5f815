"""The engine's subcommands: run, explain, runs, reproduce, diff, cache."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wanflow.errors import EngineError


def _load(path: str, sets: tuple[str, ...]) -> Any:
    """Load and validate a recipe (a seam the tests replace with fakes)."""
    from wanflow.recipe import load_recipe

    if not Path(path).is_file():
        raise EngineError(f"recipe {path} does not exist: check the path")
    return load_recipe(path, sets=sets)


def _with_seed(resolved: Any, path: str, sets: tuple[str, ...]) -> Any:
    """Draw a missing ``sampler.seed`` once, before planning, so it is in resolved.toml and the lock."""
    if all(job.values.get("sampler.seed", 0) is not None for job in resolved.sweep_jobs()):
        return resolved
    import structlog

    from wanflow.sampling import draw_seed

    train = getattr(resolved.recipe, "train", None)
    if train is not None:  # a training run's videos are drawn from the training seed
        return _load(path, (*sets, f"sampler.seed={train.seed}"))
    seed = draw_seed()
    structlog.get_logger(__name__).info("seed.drawn", seed=seed, recipe=path,
                                        note="recorded in resolved.toml and the lock")
    return _load(path, (*sets, f"sampler.seed={seed}"))


def _load_text(text: str, path: Path) -> Any:
    """Load a recipe from text, e.g. an archive's resolved.toml."""
    from wanflow.recipe import load_recipe_text

    return load_recipe_text(text, path=path)


def _pipeline_for(model: str) -> Any:
    """The pipeline that builds a family's steps, from the plugin registry."""
    from wanflow.plugins import get_registry

    return get_registry().pipeline(model)


def _planning(model: str) -> Any:
    """The family's pipeline for explain, diff and --dry-run: it never downloads, and plans even
    when some weights are not on this machine (those steps "will run: weights not present")."""
    pipeline = _pipeline_for(model)
    only = getattr(pipeline, "planning_only", None)
    return only() if callable(only) else pipeline


def _plugins() -> tuple[tuple[str, str], ...]:
    """Every loaded plugin and its version, for the lock."""
    from wanflow.plugins import get_registry

    return tuple(get_registry().plugins())


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Plan without downloading: explain, diff and --dry-run only look (missing files are an error)."""
    before = os.environ.get("WANFLOW_OFFLINE")
    os.environ["WANFLOW_OFFLINE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("WANFLOW_OFFLINE") if before is None else os.environ.__setitem__("WANFLOW_OFFLINE", before)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _runs_dir(args: argparse.Namespace) -> Path:
    """``--runs-dir``, else ``WANFLOW_RUNS``, else ``./runs``."""
    return Path(args.runs_dir or os.environ.get("WANFLOW_RUNS") or "runs")


def _cache() -> Any:
    from wanflow.engine.cache import Cache

    return Cache()


def _options(args: argparse.Namespace) -> Any:
    """How to run: quiet (no bars, no step lines), and JSON logs keep stderr to JSON lines."""
    from wanflow.engine.runner import RunOptions
    from wanflow.plugins import get_registry

    quiet = getattr(args, "quiet", False)
    readable = not quiet and not getattr(args, "log_json", False)
    return RunOptions(runs_dir=_runs_dir(args), no_cache=getattr(args, "no_cache", False),
                      quiet=not readable, plugins=_plugins(),
                      on_event=_events(get_registry().notify, readable))


def _events(notify: Any, readable: bool) -> Any:
    """The plugins' hook, plus one line per step on the terminal unless quiet or JSON."""
    if not readable:
        return notify
    from wanflow.logs import StepLines

    lines = StepLines()

    def on_event(event: dict[str, Any]) -> None:
        lines(event)
        notify(event)

    return on_event


def _explain_lines(resolved: Any, cache: Any) -> list[str]:
    from wanflow.engine.explain import explain
    from wanflow.engine.runner import plan_job

    lines, absent = [], set()
    for job in resolved.sweep_jobs():
        if getattr(job, "job_label", ""):
            lines.append(f"[{job.job_label}]")
        the_plan = plan_job(job, _planning(job.model), cache)
        absent |= {where.split(": ")[1].split(".")[0] for where in the_plan.absent_weights()}
        lines += [e.line() for e in explain(the_plan, cache)]
    if absent:
        lines.append(f"not on this machine: {', '.join(sorted(absent))}; `wanflow run` downloads "
                     "them (`wanflow models --files` lists every file and where it goes)")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    """Run a recipe (``--dry-run``: validate and print the plan only)."""
    resolved = _load(args.file, tuple(args.set))
    if not args.dry_run:
        resolved = _with_seed(resolved, args.file, tuple(args.set))
    if args.dry_run:
        for job in resolved.sweep_jobs():
            _out(f"{job.name} {getattr(job, 'job_label', '')}".rstrip())
            specs = _planning(job.model).steps(job)
            for spec in specs:
                src = ", ".join(f"{r}←{s}" for r, s in spec.inputs.items())
                _out(f"  {spec.name:<28} {spec.step.kind}  {src}".rstrip())
        return 0
    from wanflow.engine.runner import run_recipe

    with _cache() as cache:
        if args.explain:
            _out("\n".join(_explain_lines(resolved, cache)))
        outcomes = run_recipe(resolved, _pipeline_for, cache, _options(args))
    from wanflow.api import final_output

    if not args.quiet:
        for o in outcomes:
            hits = sum(r.hit for r in o.results.values())
            _out(f"{o.archive}  ({hits} hit, {len(o.results) - hits} computed)")
    for o in outcomes:  # last: what a script captures (`--quiet` prints nothing else)
        _out(str(final_output(o)))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Say which steps would hit and why the others would miss, without running."""
    resolved = _load(args.file, tuple(args.set))
    with _cache() as cache:
        _out("\n".join(_explain_lines(resolved, cache)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The memory plan of every job, before anything loads (a plan that cannot fit: exit 2)."""
    resolved = _load(args.file, tuple(args.set))
    for job in resolved.sweep_jobs():
        if getattr(job, "job_label", ""):
            _out(f"[{job.job_label}]")
        found = _planning(job.model).memory_plan(job)
        lines = [*found.explain(), *(line for p in found.peaks for line in getattr(p, "describe", list)())] \
            if found is not None else ["weights not on this machine: sizes unknown (`wanflow run` downloads them)"]
        _out("\n".join(lines))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List run archives."""
    from wanflow.engine.archive import list_runs

    for info in list_runs(_runs_dir(args)):
        if args.name is None or info.name == args.name:
            _out(f"{info.name:<24} {info.path}" + ("" if info.complete else "  (incomplete)"))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Check an archive's inputs and weights, recompute it; exit 1 when an output is not bit-identical."""
    from wanflow.engine.reproduce import reproduce
    from wanflow.output.video import describe_difference

    with _cache() as cache:
        rep = reproduce(Path(args.archive), _load_text, _pipeline_for, cache, _options(args),
                        use_cache=args.use_cache, allow_changes=args.allow_changes,
                        describe=describe_difference)
    _out("\n".join(rep.lines()))
    return 0 if rep.identical else 1


def cmd_import(args: argparse.Namespace) -> int:
    """Bring a run archive (folder, .tar or .tar.gz) from elsewhere into the runs folder, inputs checked."""
    from wanflow.engine.archive import import_archive, open_archive
    from wanflow.engine.reproduce import weight_status

    target = import_archive(Path(args.archive), _runs_dir(args))
    _out(f"imported {args.archive} -> {target} (its inputs are whole)")
    with _cache() as cache, _offline():
        _out("\n".join(weight_status(open_archive(target), _load_text, _pipeline_for, cache)))
    _out(f"check it with: wanflow reproduce {target}")
    return 0


def _side(path: str) -> tuple[Any, Any]:
    """(resolved, lock or None) for a recipe file or an archive folder."""
    from wanflow.engine.archive import open_archive

    p = Path(path)
    if p.is_dir():
        arc = open_archive(p)
        return _load_text(arc.resolved_text, p / "resolved.toml"), arc.lock
    if not p.exists():
        raise EngineError(f"{path} does not exist: give a recipe file or a run archive folder")
    return _load(path, ()), None


def cmd_diff(args: argparse.Namespace) -> int:
    """Semantic difference of two recipes or archives."""
    from wanflow.engine.diff import DiffReport, diff_values, render_md, render_text
    from wanflow.engine.lock import lock_differences
    from wanflow.engine.runner import keyed_values

    (ra, la), (rb, lb) = _side(args.a), _side(args.b)
    specs = list(_planning(rb.model).steps(rb))
    specs_a = list(_planning(ra.model).steps(ra))
    lock_diffs = tuple(lock_differences(la, lb)) if la is not None and lb is not None else ()
    with _cache() as cache:  # inputs compared by content: two archives keep one image in two places
        a, b = keyed_values(ra, cache.memo.digest), keyed_values(rb, cache.memo.digest)
        changes = diff_values(a, b, specs, specs_a, cache.memo.digest)
    rep = DiffReport(args.a, args.b, changes, lock_diffs)
    _out(render_md(rep) if args.format == "md" else render_text(rep))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """stats | gc [--max-size] | verify | clear."""
    from wanflow.engine.cache import parse_size

    with _cache() as cache:
        if args.action == "stats":
            _out("\n".join(f"{k}: {v}" for k, v in cache.stats().items()))
        elif args.action == "gc":
            limit = parse_size(args.max_size) if args.max_size else None
            _out(f"freed {cache.gc(limit)} bytes")
        elif args.action == "verify":
            rep = cache.verify()
            _out(f"checked {rep.checked} objects: {len(rep.corrupt)} corrupt (removed), "
                 f"{rep.dangling_keys} index entries without an object (dropped)")
            for digest in rep.corrupt:
                _out(f"corrupt: {digest}")
            return 1 if rep.corrupt else 0
        else:
            cache.clear()
            _out(f"cleared {cache.root}")
    return 0


def register(sub: Any) -> None:
    """Add the engine's subcommands to the CLI's subparsers."""
    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="recipe TOML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key, e.g. sampler.seed=3 (repeatable)")

    p = sub.add_parser("run", help="run a recipe, reusing every step whose inputs did not change")
    recipe_args(p)
    p.add_argument("--explain", action="store_true", help="say per step hit/miss and why first")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    p.add_argument("--no-cache", action="store_true", help="recompute every step")
    p.add_argument("--quiet", action="store_true", help="print only errors and the output's final path")
    p.add_argument("--runs-dir", help="where run archives go (default ./runs or $WANFLOW_RUNS)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("explain", help="say which steps would re-run and why, without running")
    recipe_args(p)
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("plan", help="where each model's weights will live and each step's predicted peak memory")
    recipe_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("runs", help="list run archives")
    p.add_argument("name", nargs="?", help="only this recipe name")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("reproduce", help="check an archive's inputs and weights, recompute it, compare bit for bit")
    p.add_argument("archive")
    reuse = p.add_mutually_exclusive_group()
    reuse.add_argument("--use-cache", action="store_true",
                       help="reuse cached step outputs instead of recomputing every step (fast, proves less)")
    reuse.add_argument("--no-cache", action="store_true", help="recompute every step (the default)")
    p.add_argument("--allow-changes", action="store_true",
                   help="run even when a weight differs from the archive's, to see what changes")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("import", help="copy a run archive (folder or tar) into the runs folder, inputs checked")
    p.add_argument("archive")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("diff", help="semantic difference of two recipes or run archives")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=("text", "md"), default="text")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("cache", help="inspect or trim the step cache")
    p.add_argument("action", choices=("stats", "gc", "verify", "clear"))
    p.add_argument("--max-size", help="with gc: evict least-recently-used objects beyond, e.g. 20G")
    p.set_defaults(func=cmd_cache)
