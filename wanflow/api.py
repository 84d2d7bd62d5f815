"""wanflow as a library: load a recipe (a file or a dict), run it, read the result.

    import wanflow

    result = wanflow.run({"model": "wan2.1-t2v-1.3b", "prompt": {"text": "a puppy on grass"}})
    result.video          # the mp4 in the run archive
    frames = result.frames()  # (T, H, W, 3) uint8 numpy array, exactly as decoded

The same engine as ``wanflow run``: the same cache, archives and keys, so a notebook and the
command line share every cached step. Library use prints nothing (no log lines, no progress
bars) until the caller configures Python's ``logging`` or asks for ``progress=True``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import attrs

from wanflow.errors import EngineError, RecipeError

if TYPE_CHECKING:
    import numpy as np

    from wanflow.engine.runner import RunOutcome
    from wanflow.recipe import ResolvedRecipe

#: What ``load``, ``validate`` and ``run`` accept: a recipe file, a dict of its tables, or a Recipe.
RecipeSource = Union[str, "os.PathLike[str]", Mapping[str, Any], "Recipe"]

#: Overrides as ``--set`` takes them: ``{"sampler.seed": 3}``, nested tables, or ``["sampler.seed=3"]``.
Overrides = Union[Mapping[str, Any], Sequence[str], None]

#: The file name a dict recipe stands for: its relative paths resolve next to it, messages name it,
#: and a recipe without ``name`` files its runs under ``runs/recipe/``.
DICT_RECIPE_FILE = "recipe.toml"


@attrs.frozen
class Recipe:
    """A loaded and validated recipe, with where it came from (so overrides can be added later)."""

    resolved: ResolvedRecipe
    path: Path  # the recipe file, or base_dir/recipe.toml for a dict
    text: str  # the recipe's own TOML, as written (or as the dict reads)
    sets: tuple[str, ...] = ()  # the overrides applied, as ``--set`` items

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def model(self) -> str:
        return self.resolved.model

    @property
    def values(self) -> Mapping[str, Any]:
        """Every resolved value by dotted key (``"sampler.steps"``), defaults included."""
        return self.resolved.values

    @property
    def jobs(self) -> int:
        """How many jobs the recipe makes (1, or the size of its ``[sweep]``)."""
        return len(self.resolved.sweep_jobs())

    def with_overrides(self, overrides: Overrides) -> Recipe:
        """This recipe with more overrides on top (later ones win), validated again."""
        return _load_text(self.text, self.path, (*self.sets, *_set_items(overrides)))


@attrs.frozen
class StepRun:
    """How one step of a run went."""

    name: str  # e.g. "denoise", "encode-text:positive"
    kind: str
    hit: bool  # served from the cache
    duration_s: float  # 0.0 for a hit
    key: str
    reasons: tuple[str, ...] = ()  # why it ran ("never run", "[sampler].cfg 5.0 → 6.0", …)


@attrs.frozen
class RunResult:
    """A finished job: its archive, outputs, seed and how each step went."""

    archive: Path
    video: Path  # the encoded video (or the final output of a pipeline without one)
    outputs: Mapping[str, Path]  # archive name ("video.mp4", "video.json", …) -> file
    steps: Mapping[str, StepRun]  # in the order they ran
    seed: int
    job: str = ""  # the sweep coordinates ("" outside sweeps)
    _frames: tuple[Path, str] | None = None  # (cache root, object digest) of the decoded frames

    @property
    def hits(self) -> tuple[str, ...]:
        """The steps served from the cache."""
        return tuple(name for name, s in self.steps.items() if s.hit)

    @property
    def computed(self) -> tuple[str, ...]:
        """The steps that ran."""
        return tuple(name for name, s in self.steps.items() if not s.hit)

    def frames(self) -> np.ndarray:
        """The decoded frames, (T, H, W, 3) uint8, exactly as they went into the encoder (no
        video compression); read from the cache, without torch."""
        if self._frames is None:
            raise EngineError(f"{self.archive}: this run's pipeline has no decoded frames to return; "
                              f"read its outputs instead: {sorted(self.outputs)}")
        from safetensors.numpy import load

        from wanflow.engine.store import ObjectStore

        root, digest = self._frames
        store = ObjectStore(root)
        if not store.has(digest):
            raise EngineError(f"the decoded frames of {self.archive} are no longer in the cache {root} "
                              "(evicted or cleared): run the recipe again (only decode runs) or read "
                              f"{self.video}")
        return load(store.get(digest))["frames"]


def load(source: RecipeSource, overrides: Overrides = None, *, base_dir: str | os.PathLike[str] | None = None
         ) -> Recipe:
    """Load and validate a recipe; ``RecipeError`` lists every problem at once.

    Args:
        source: a recipe file, a dict of its tables (``{"model": …, "sampler": {"steps": 30}}``),
            or a Recipe (then only ``overrides`` apply).
        overrides: like ``--set``: ``{"sampler.seed": 3}`` or ``["sampler.seed=3"]``.
        base_dir: where a dict recipe's relative paths (inputs, weights) resolve; default the
            working directory. Ignored for files: theirs resolve next to the file.
    """
    route_to_stdlib()
    if isinstance(source, Recipe):
        return source.with_overrides(overrides)
    if isinstance(source, Mapping):
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        return _load_text(_dict_to_toml(source), base / DICT_RECIPE_FILE, _set_items(overrides))
    path = Path(source)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file; check the path (or pass a dict of the recipe's tables)")
    return _load_text(path.read_text(encoding="utf-8"), path, _set_items(overrides))


def validate(source: RecipeSource, overrides: Overrides = None, *,
             base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Every problem of a recipe, as ``wanflow validate`` reports them; empty when it can run."""
    try:
        recipe = load(source, overrides, base_dir=base_dir)
    except RecipeError as exc:
        return list(exc.problems)
    from wanflow.engine.step import pipeline_problems
    from wanflow.plugins import get_registry

    found: list[str] = []
    for job in recipe.resolved.sweep_jobs():
        found += [p for p in pipeline_problems(get_registry().pipeline(job.model), job) if p not in found]
    return found


def run(source: RecipeSource, overrides: Overrides = None, *, base_dir: str | os.PathLike[str] | None = None,
        runs_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
        no_cache: bool = False, progress: bool = False) -> RunResult:
    """Run a one-job recipe (``run_all`` runs a ``[sweep]``) and return its result.

    Args:
        runs_dir: where the archive goes; default ``WANFLOW_RUNS``, else ``./runs``.
        cache_dir: the step cache; default ``WANFLOW_CACHE``, else the user cache folder.
        no_cache: recompute every step (the results are still stored).
        progress: draw progress bars (on stderr) for the long steps.
    """
    recipe = load(source, overrides, base_dir=base_dir)
    if recipe.jobs != 1:
        raise RecipeError(f"{recipe.path}: [sweep] makes {recipe.jobs} jobs and run() returns one result; "
                          "call wanflow.run_all() for the list of results")
    return run_all(recipe, runs_dir=runs_dir, cache_dir=cache_dir, no_cache=no_cache, progress=progress)[0]


def run_all(source: RecipeSource, overrides: Overrides = None, *,
            base_dir: str | os.PathLike[str] | None = None, runs_dir: str | os.PathLike[str] | None = None,
            cache_dir: str | os.PathLike[str] | None = None, no_cache: bool = False,
            progress: bool = False) -> list[RunResult]:
    """Run every job of a recipe (one per ``[sweep]`` value; shared steps run once)."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.runner import RunOptions, run_recipe
    from wanflow.plugins import get_registry

    recipe = _with_seed(load(source, overrides, base_dir=base_dir))
    registry = get_registry()
    opts = RunOptions(runs_dir=Path(runs_dir or os.environ.get("WANFLOW_RUNS") or "runs"), no_cache=no_cache,
                      quiet=not progress, plugins=tuple(registry.plugins()), on_event=registry.notify)
    with Cache(Path(cache_dir) if cache_dir is not None else None) as cache:
        outcomes = run_recipe(recipe.resolved, registry.pipeline, cache, opts)
        root = cache.root
    jobs = recipe.resolved.sweep_jobs()
    return [_result(o, job, root) for o, job in zip(outcomes, jobs, strict=True)]


def route_to_stdlib() -> None:
    """Library logging: unless the caller configured structlog, wanflow's events become records of
    the standard ``logging`` loggers named after their modules (``wanflow.engine`` …), which print
    nothing until the caller configures ``logging`` (e.g. ``logging.basicConfig(level="INFO")``)."""
    import logging

    import structlog

    root = logging.getLogger("wanflow")
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())  # no "last resort" printing of warnings either
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, structlog.processors.format_exc_info, _as_message],
        wrapper_class=structlog.stdlib.BoundLogger, logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False)


def _as_message(_logger: Any, _method: str, event: Mapping[str, Any]) -> str:
    """``step.done node=denoise duration_s=0.12``: an event and its fields as one log message."""
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k != "event")
    return f"{event.get('event', '')} {fields}".rstrip()


def final_output(outcome: RunOutcome) -> Path:
    """The file a run is for: the output of its ``save`` step in the archive, or of a training
    run's (first) ``export``; else the archive."""
    for kind in ("export", "save"):
        for ps in outcome.plan.steps:
            if ps.spec.step.kind == kind and ps.spec.archive_as:
                return outcome.archive / "outputs" / ps.spec.archive_as
    return outcome.archive


def _result(outcome: RunOutcome, job: ResolvedRecipe, cache_root: Path) -> RunResult:
    steps = {name: StepRun(name, r.kind, r.hit, r.duration_s, r.key, tuple(r.reasons))
             for name, r in outcome.results.items()}
    outputs = {ps.spec.archive_as: outcome.archive / "outputs" / ps.spec.archive_as
               for ps in outcome.plan.steps if ps.spec.archive_as}
    return RunResult(archive=outcome.archive, video=final_output(outcome), outputs=outputs, steps=steps,
                     seed=int(job.values["sampler.seed"]), job=str(getattr(job, "job_label", "") or ""),
                     frames=_frames_of(outcome, cache_root))


def _frames_of(outcome: RunOutcome, cache_root: Path) -> tuple[Path, str] | None:
    """Where the decoded frames that the save step encoded are stored."""
    for ps in outcome.plan.steps:
        source = ps.spec.inputs.get("frames") if ps.spec.step.kind == "save" else None
        if source is not None:
            return cache_root, outcome.results[source].digest
    return None


def _with_seed(recipe: Recipe) -> Recipe:
    """Draw a missing ``sampler.seed`` once, so that it is in the archive and the run reproduces."""
    if all(job.values.get("sampler.seed") is not None for job in recipe.resolved.sweep_jobs()):
        return recipe
    from wanflow.sampling import draw_seed

    return recipe.with_overrides([f"sampler.seed={draw_seed()}"])


def _load_text(text: str, path: Path, sets: tuple[str, ...]) -> Recipe:
    from wanflow.recipe import load_recipe_text

    return Recipe(load_recipe_text(text, path=path, sets=sets), Path(path), text, sets)


def _set_items(overrides: Overrides) -> tuple[str, ...]:
    """``--set`` items from a mapping (nested tables become dotted keys) or a list of items."""
    if overrides is None:
        return ()
    if isinstance(overrides, str):
        raise RecipeError(f"overrides {overrides!r}: pass a dict ({{'sampler.seed': 3}}) or a list of "
                          "'KEY=VALUE' strings, not one string")
    if not isinstance(overrides, Mapping):
        return tuple(str(item) for item in overrides)
    return tuple(f"{key}={_toml_value(key, value)}" for key, value in _flatten(overrides, ""))


def _flatten(table: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        out += _flatten(value, f"{dotted}.") if isinstance(value, Mapping) else [(dotted, value)]
    return out


def _toml_value(key: str, value: Any) -> str:
    """A value as TOML text (what ``--set`` parses)."""
    import tomlkit

    if value is None:
        raise RecipeError(f"overrides: {key} = None: TOML has no null; leave the key out to keep its default")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return tomlkit.item(value).as_string()


def _dict_to_toml(data: Mapping[str, Any]) -> str:
    """A dict recipe as TOML text (what its archive's recipe.toml holds)."""
    import tomlkit

    nulls = [key for key, value in _flatten(data, "") if value is None]
    if nulls:
        raise RecipeError(f"recipe dict: {', '.join(nulls)} = None: TOML has no null; leave the key out "
                          "to keep its default")
    return tomlkit.dumps(_plain(data))


def _plain(value: Any) -> Any:
    """Mappings as dicts, tuples as lists and paths as strings, which TOML can write."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
