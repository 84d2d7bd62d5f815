"""Recipe commands: validate, fmt, show, models (and a dry `run` until execution is installed)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import tomlkit

from wanflow.engine.archive import INCOMPLETE_PREFIX
from wanflow.errors import RecipeError, WanflowError, display_path
from wanflow.recipe import ResolvedRecipe, load_recipe
from wanflow.recipe.canonical import format_file
from wanflow.recipe.reasons import why


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check recipes; report every problem at once")
    p.add_argument("files", nargs="+", type=Path, help="recipe files or folders of recipes")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("fmt", help="rewrite recipes in canonical form")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--check", action="store_true", help="change nothing; fail if a file is not canonical")
    p.set_defaults(func=cmd_fmt)
    p = sub.add_parser("show", help="the resolved recipe, every default filled in, with where each value came from")
    p.add_argument("file", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("models", help="list the model families, their files, and which are present locally")
    p.add_argument("families", nargs="*", help="only these families (default: all)")
    p.add_argument("--files", action="store_true", help="also list each component's source and missing files")
    p.set_defaults(func=cmd_models)


def recipe_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expand to the .toml files under them (sorted), leaving out run
    archives, the runs folder and hidden folders: an archive records what ran, it is not a recipe."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir() and is_run_record(path):
            raise WanflowError(f"{display_path(path)}: is a run archive (or a folder of them), a record of what "
                               "ran: it is neither validated nor formatted; `wanflow reproduce` checks an archive")
        out.extend(_walk(path) if path.is_dir() else [path])
    return out


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_run_record(here / d))
        found += [here / f for f in files if f.endswith(".toml")]
    return sorted(found)


def is_archive(folder: Path) -> bool:
    """A run archive, complete or still being written (see ``wanflow.engine.archive``)."""
    return folder.name.startswith(INCOMPLETE_PREFIX) or all(
        (folder / name).is_file() for name in ("recipe.toml", "resolved.toml"))


def is_run_record(folder: Path) -> bool:
    """An archive, a recipe's folder of archives (``runs/NAME``: archives and sweep indexes only),
    or the runs folder."""
    if is_archive(folder) or folder.resolve() == _runs_dir().resolve():
        return True
    children = list(folder.iterdir())
    return (any(c.is_dir() and is_archive(c) for c in children)
            and all(c.is_dir() or (c.name.startswith("sweep-") and c.suffix == ".toml") for c in children))


def _runs_dir() -> Path:
    """Where `wanflow run` writes archives by default: ``WANFLOW_RUNS``, else ``./runs``."""
    return Path(os.environ.get("WANFLOW_RUNS") or "runs")


def cmd_validate(args: argparse.Namespace) -> int:
    problems: list[str] = []
    files = recipe_files(args.files)
    for path in files:
        try:
            resolved = load_recipe(path, sets=args.sets)
        except RecipeError as exc:
            problems.extend(exc.problems)
            continue
        jobs = resolved.sweep_jobs()
        unsupported = _pipeline_problems(jobs)
        problems.extend(unsupported)
        if not unsupported:
            print(f"ok: {display_path(path)}" + (f" ({len(jobs)} jobs)" if len(jobs) > 1 else ""))
    if problems:
        raise RecipeError(problems)
    if not files:
        raise WanflowError("no recipe files found in " + ", ".join(map(str, args.files)))
    return 0


def _pipeline_problems(jobs: list[ResolvedRecipe]) -> list[str]:
    """What each job's pipeline cannot honour (LoRA, TeaCache, ... not built yet), once each."""
    from wanflow.engine.step import pipeline_problems
    from wanflow.plugins import get_registry

    found: list[str] = []
    for job in jobs:
        found += [p for p in pipeline_problems(get_registry().pipeline(job.model), job) if p not in found]
    return found


def cmd_fmt(args: argparse.Namespace) -> int:
    changed = []
    for path in recipe_files(args.files):
        if path.parent.is_dir() and is_run_record(path.parent):
            raise WanflowError(f"{display_path(path)}: belongs to a run archive, a record of what ran; "
                               "`wanflow fmt` does not rewrite archives (format the recipe it came from)")
        text = _read(path)
        canonical = format_file(str(path))
        if canonical == text:
            continue
        changed.append(display_path(path))
        if not args.check:
            write_atomic(path, canonical)
            print(f"formatted {display_path(path)}")
    if args.check and changed:
        raise WanflowError("not in canonical form: " + ", ".join(changed) + "; run `wanflow fmt` on them")
    return 0


def _read(path: Path) -> str:
    if not path.is_file():
        raise WanflowError(f"{display_path(path)}: no such recipe file")
    return path.read_text(encoding="utf-8")


def write_atomic(path: Path, text: str) -> None:
    """Replace a file's content so that a crash leaves either the old or the new text, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_show(args: argparse.Namespace) -> int:
    resolved = load_recipe(args.file, sets=args.sets)
    sys.stdout.write(annotated_toml(resolved))
    return 0


def annotated_toml(resolved: ResolvedRecipe) -> str:
    """The resolved recipe with a trailing comment on every value saying where it came from (and,
    for a default, why it is the default), the unset optional settings, and the ``[sweep]``."""
    doc = tomlkit.parse(resolved.canonical_toml())
    _annotate(doc, "", resolved)
    _add_unset(doc, resolved)
    if resolved.sweep:
        _add_sweep(doc, resolved)
    head = f"# {display_path(resolved.path)} resolved: family {resolved.model}\n"
    return head + tomlkit.dumps(doc)


def _origin_comment(dotted: str, resolved: ResolvedRecipe) -> str:
    origin = resolved.origins[dotted]
    if origin == "family":
        text = f"family {resolved.model}"
    elif origin == "default":
        reason = why(dotted)
        text = f"default: {reason}" if reason else "default"
    else:
        text = origin
    if any(dotted == k or dotted.startswith(k + ".") for k in resolved.sweep):
        text += "; [sweep] replaces it in every job"
    return text


def _add_unset(doc: tomlkit.TOMLDocument, resolved: ResolvedRecipe) -> None:
    """Optional settings left unset (TOML has no null), as comments in their table with their reason."""
    accepted = resolved.family.accepted_inputs
    for dotted, value in resolved.values.items():
        parts = dotted.split(".")
        if value is not None or len(parts) != 2 or parts[0] == "train":
            continue
        if parts[0] == "inputs" and parts[1] not in accepted:
            continue  # inputs this family does not take are noise here
        if parts[0] not in doc:
            doc.add(parts[0], tomlkit.table())
        swept = dotted in resolved.sweep
        text = f"{parts[1]}: set by [sweep] in each job" if swept else f"{parts[1]} unset: {why(dotted) or 'optional'}"
        _comment_before_blank(doc[parts[0]], text)


def _comment_before_blank(table: tomlkit.items.Table, text: str) -> None:
    """Append a comment line to a table, above the blank line that separates it from the next one."""
    body = table.value.body
    end = len(body)
    while end and body[end - 1][0] is None and isinstance(body[end - 1][1], tomlkit.items.Whitespace):
        end -= 1
    body.insert(end, (None, tomlkit.comment(text)))


def _add_sweep(doc: tomlkit.TOMLDocument, resolved: ResolvedRecipe) -> None:
    table = tomlkit.table()
    count = len(resolved.sweep_jobs())
    table.add(tomlkit.comment(f"{count} jobs, one per combination; each sets these keys over the values above"))
    for key, values in resolved.sweep.items():
        table.add(key, tomlkit.item(list(values)))
    doc.add("sweep", table)


def _annotate(container: object, prefix: str, resolved: ResolvedRecipe) -> None:
    body = container.body if isinstance(container, tomlkit.TOMLDocument) else container.value.body  # type: ignore
    for key, item in body:
        if key is None:
            continue
        dotted = f"{prefix}{key.key}"
        if isinstance(item, tomlkit.items.Table):
            _annotate(item, dotted + ".", resolved)
        elif isinstance(item, tomlkit.items.AoT):
            continue
        elif dotted in resolved.origins:
            item.comment(_origin_comment(dotted, resolved))


def cmd_models(args: argparse.Namespace) -> int:
    from wanflow.plugins import get_registry
    from wanflow.sources import models_status

    registry = get_registry()
    unknown = [n for n in args.families if registry.family(n) is None]
    if unknown:
        raise WanflowError("unknown family " + ", ".join(unknown) + "; `wanflow models` lists them")
    for name in args.families or registry.family_names():
        family = registry.family(name)
        statuses = models_status(family)
        owner = registry.owner("family", name)
        ready = "present" if all(s.present for s in statuses) else "to download"
        print(f"{name:24} {ready:12} {family.description}" + (f"  [plugin {owner}]" if owner != "wanflow" else ""))
        for status in statuses if args.files else ():
            mark = "ok" if status.present else "missing: " + ", ".join(status.missing)
            print(f"    {status.component:16} {status.source}  ({status.where})  {mark}")
    return 0
