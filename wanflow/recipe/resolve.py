"""From a recipe file to a ``ResolvedRecipe``: every value filled in, checked, and traceable.

``load_recipe`` is the one entry point: parse (with includes and ``--set``), structure, apply
the family's official values, validate everything at once, expand sweeps. Nothing here loads a
model or touches torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.errors import RecipeError, display_path
from wanflow.families.spec import FamilyLookup, FamilySpec
from wanflow.recipe.aliases import dotted_hint
from wanflow.recipe.flatten import flatten, to_data
from wanflow.recipe.longcat_size import LABEL as SIZED
from wanflow.recipe.longcat_size import with_bucket_size
from wanflow.recipe.problems import KeyPath, Problems
from wanflow.recipe.render import render_toml
from wanflow.recipe.schema import FILE_INPUTS, Recipe
from wanflow.recipe.source import (
    Origin,
    apply_override,
    deep_copy,
    load_layers,
    parse_override,
)
from wanflow.recipe.structure import structure
from wanflow.recipe.train_rules import TRAIN_PATHS
from wanflow.recipe.validate import check_identity, check_recipe


@attrs.frozen
class ResolvedRecipe:
    """A validated recipe with every default filled in and the origin of every value."""

    path: Path
    text: str  # the recipe file, verbatim
    recipe: Recipe  # family values applied, file paths absolute
    family: FamilySpec
    values: Mapping[str, Any]  # dotted key -> canonical JSON-able value, every field
    origins: Mapping[str, str]  # dotted key -> default | family | include:<file> | recipe | --set | sweep
    job_label: str = ""  # "sampler.seed=1" for one job of a sweep
    jobs: tuple[ResolvedRecipe, ...] = ()
    sweep: Mapping[str, tuple[Any, ...]] = attrs.field(factory=dict)  # [sweep] as written; {} in a job

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def model(self) -> str:
        return self.recipe.model

    def canonical_toml(self) -> str:
        """The resolved recipe as canonical TOML (what a run archive stores as resolved.toml)."""
        return render_toml(to_data(self.recipe, keep_defaults=True))

    def input_files(self) -> dict[str, Path]:
        """Dotted key -> path of every file the recipe names (inputs, LoRAs, dataset, local models)."""
        return {".".join(map(str, k)): p for k, p in file_paths(self.recipe).items()}

    def sweep_jobs(self) -> list[ResolvedRecipe]:
        """One resolved recipe per combination of ``[sweep]``; a recipe without a sweep is one job."""
        return list(self.jobs) if self.jobs else [self]


def load_recipe(path: str | Path, *, sets: Sequence[str] = (), families: FamilyLookup | None = None) -> ResolvedRecipe:
    """Load, resolve and validate a recipe file; RecipeError lists every problem at once."""
    return load_recipe_text(None, path=path, sets=sets, families=families)


def load_recipe_text(text: str | None, *, path: str | Path, sets: Sequence[str] = (),
                     families: FamilyLookup | None = None) -> ResolvedRecipe:
    """Like ``load_recipe`` for recipe text that is not (or no longer) in a file, e.g. an archive's."""
    path = Path(path).resolve()
    merged, origins = load_layers(path, text)
    overrides = [parse_override(item) for item in sets]
    conflicts = swept_overrides(merged.get("sweep"), overrides, sets, origins)
    for (key, value), item in zip(overrides, sets):
        apply_override(merged, key, value)
        origins[key] = Origin("--set", f"--set {item}", Path.cwd())
    source_text = text if text is not None else path.read_text(encoding="utf-8")
    return _resolve(merged, origins, path, source_text, families or _default_families(), early=conflicts)


def swept_overrides(sweep: Any, overrides: Sequence[tuple[KeyPath, Any]], sets: Sequence[str],
                    origins: Mapping[KeyPath, Origin]) -> list[str]:
    """A ``--set`` of a key that ``[sweep]`` also sets: every job's sweep value would replace it."""
    if not isinstance(sweep, dict):
        return []
    where = origins[("sweep",)].file if ("sweep",) in origins else "the recipe"
    out = []
    for (key, _), item in zip(overrides, sets):
        dotted = ".".join(key)
        for swept in sweep:
            if swept == dotted or swept.startswith(dotted + ".") or dotted.startswith(swept + "."):
                out.append(f'--set {item}: [sweep]."{swept}" in {where} also sets this key, and each job\'s '
                           f"sweep value would replace the --set; remove one of them (drop the --set, or "
                           f'"{swept}" from [sweep])')
    return out


def _default_families() -> FamilyLookup:
    from wanflow.plugins import (
        get_registry,  # the registry is configuration, consulted lazily
    )

    return get_registry()


def _resolve(merged: dict, origins: dict[KeyPath, Origin], path: Path, text: str, families: FamilyLookup,
             label: str = "", early: Sequence[str] = ()) -> ResolvedRecipe:
    problems = Problems(display_path(path), {k: o.file for k, o in origins.items()})
    problems.items.extend(early)
    sweep = merged.pop("sweep", None)
    recipe = structure(Recipe, merged, (), problems)
    family = check_identity(recipe, families, problems) if recipe is not None else None
    jobs: tuple[ResolvedRecipe, ...] = ()
    sized = False  # [video].width and height picked by LongCat's size buckets
    if recipe is not None and family is not None:
        recipe = _with_family(recipe, family, origins, path)
        paths = written_paths(recipe, origins)
        recipe, sized = with_bucket_size(recipe, family, origins, paths, problems)
        check_recipe(recipe, family, families, problems, paths)
        recipe = _absolute_paths(recipe, paths)
    if sweep is not None and _check_sweep(sweep, problems) and not problems.items:
        jobs = _sweep_jobs(sweep, merged, origins, path, text, families, problems)
    if problems.items:
        raise RecipeError([f"{label}: {p}" if label else p for p in problems.items])
    labels = _origin_labels(recipe, family, origins) | ({"video.width": SIZED, "video.height": SIZED} if sized else {})
    return ResolvedRecipe(path, text, recipe, family, flatten(recipe), labels,
                          label, jobs, {k: tuple(v) for k, v in sweep.items()} if jobs else {})


def _with_family(recipe: Recipe, family: FamilySpec, origins: Mapping[KeyPath, Origin], path: Path) -> Recipe:
    """Fill unset family-dependent settings with the family's official values (those of the
    solver the recipe picks, where the family has its own for it), and the name."""
    written = ("sampler", "solver") in origins
    solver = recipe.sampler.solver if written else family.defaults.get("sampler.solver", recipe.sampler.solver)
    defaults = {**family.defaults, **family.solver_defaults.get(str(solver), {})}
    tables = {}
    for field in attrs.fields(Recipe):
        table = getattr(recipe, field.name)
        if not attrs.has(type(table)):
            continue
        changes = {f.name: defaults[f"{field.name}.{f.name}"] for f in attrs.fields(type(table))
                   if f.metadata.get("family") and f"{field.name}.{f.name}" in defaults
                   and (field.name, f.name) not in origins}
        tables[field.name] = attrs.evolve(table, **changes) if changes else table
    name = recipe.name or path.stem
    return attrs.evolve(recipe, name=name, **tables)


def file_paths(recipe: Recipe) -> dict[KeyPath, Path]:
    """Key path -> path of every file-valued setting that is set (as stored in the recipe)."""
    out: dict[KeyPath, Path] = {}
    for dotted in FILE_INPUTS:
        node: Any = recipe.inputs
        for part in dotted.split("."):
            node = getattr(node, part) if node is not None else None
        key = ("inputs", *dotted.split("."))
        if isinstance(node, str):
            out[key] = Path(node)
        elif isinstance(node, tuple):  # several files ([inputs.vace].reference): one key each, in order
            out |= {(*key, i): Path(item) for i, item in enumerate(node) if isinstance(item, str)}
    for i, lora in enumerate(recipe.lora):
        if lora.path:
            out[("lora", i, "path")] = Path(lora.path)
    if recipe.train is not None:
        for field in TRAIN_PATHS:
            if getattr(recipe.train, field):
                out[("train", field)] = Path(getattr(recipe.train, field))
    for name, model in recipe.models.items():
        if model.source and (":" not in model.source.split("/")[0] or Path(model.source).exists()):
            out[("models", name, "source")] = Path(model.source)
    return out


def written_paths(recipe: Recipe, origins: Mapping[KeyPath, Origin]) -> dict[KeyPath, tuple[str, Path]]:
    """File settings as written, and resolved against the folder of the file that wrote them."""
    out = {}
    for key, p in file_paths(recipe).items():
        origin = next((origins[key[:n]] for n in range(len(key), 0, -1) if key[:n] in origins), None)
        base = origin.base_dir if origin else Path.cwd()
        out[key] = (str(p), (base / p.expanduser()).resolve())
    return out


def _absolute_paths(recipe: Recipe, paths: Mapping[KeyPath, tuple[str, Path]]) -> Recipe:
    """The recipe with every file setting replaced by its absolute path."""
    data = to_data(recipe, keep_defaults=True)
    for key, (_, resolved) in paths.items():
        node = data
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = str(resolved)
    return structure(Recipe, data, (), Problems(""))


def _origin_labels(recipe: Recipe, family: FamilySpec, origins: Mapping[KeyPath, Origin]) -> dict[str, str]:
    labels = {}
    for dotted in flatten(recipe):
        key = tuple(dotted.split("."))
        written = next((origins[key[:n]] for n in range(len(key), 0, -1) if key[:n] in origins), None)
        if written is not None:
            labels[dotted] = written.label
        else:
            labels[dotted] = "family" if dotted in family.defaults else "default"
    return labels


def _check_sweep(sweep: Any, problems: Problems) -> bool:
    """Sweep keys must name recipe fields and map to non-empty arrays; True when usable."""
    if not isinstance(sweep, dict) or not sweep:
        problems.add(("sweep",), sweep, 'must be a table of dotted keys to arrays, e.g. "sampler.seed" = [0, 1]')
        return False
    known = list(flatten(Recipe(model="")).keys())
    ok = True
    for key, values in sweep.items():
        if key not in known and not any(k.startswith(key + ".") for k in known):
            problems.add(("sweep", key), values, "names no recipe field" + dotted_hint(key, known))
            ok = False
        elif not isinstance(values, list) or not values:
            problems.add(("sweep", key), values, "must be a non-empty array of values to try")
            ok = False
    return ok


def _sweep_jobs(sweep: Any, merged: dict, origins: dict[KeyPath, Origin], path: Path, text: str,
                families: FamilyLookup, problems: Problems) -> tuple[ResolvedRecipe, ...]:
    """Expand ``[sweep]`` into one resolved job per combination, each fully validated."""
    jobs, errors = [], []
    for combo in itertools.product(*sweep.values()):
        job_data = deep_copy(merged)
        job_origins = dict(origins)
        for key, value in zip(sweep, combo):
            apply_override(job_data, tuple(key.split(".")), value)
            job_origins[tuple(key.split("."))] = Origin("sweep", f'{display_path(path)} [sweep]."{key}"', path.parent)
        label = ",".join(f"{k}={v}" for k, v in zip(sweep, combo))
        try:
            jobs.append(_resolve(job_data, job_origins, path, text, families, label))
        except RecipeError as exc:
            errors.extend(exc.problems)
    problems.items.extend(errors)
    return tuple(jobs)

