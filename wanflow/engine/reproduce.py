"""Re-run an archive and say, per output, whether it is bit-identical, and if not, why.

What the run was made from is checked first: every archived input and every weight must have the
digest the lock recorded, else nothing is computed and each one that differs is named. Then every
step is recomputed (cached outputs would only prove that the cache still agrees with itself),
and the outputs are compared by bytes and, for videos whose bytes differ, by decoded frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.archive import (
    Archive, Digest, content_digest, input_problems, is_archived_input, open_archive)
from wanflow.engine.cache import Cache
from wanflow.engine.explain import show
from wanflow.engine.lock import lock_differences, step_differences
from wanflow.engine.plan import ABSENT, Plan
from wanflow.engine.runner import RunOptions, plan_job, run_job
from wanflow.engine.step import Pipeline
from wanflow.errors import ArchiveError, WanflowError

#: (old file, new file) of an output whose bytes differ → what else differs ("" when nothing to add);
#: the CLI passes ``wanflow.output.video.describe_difference`` (decoded frames of videos).
Describe = Callable[[Path, Path], str]

INPUT_FIX = ("import the archive again (its inputs travel inside it) or undo the edit of resolved.toml; "
             "the weights are checked once the inputs are right")
WEIGHT_FIX = ("get the weights the run used (`modelscope download REPO --revision REVISION`, with the "
              "revision above), or run with --allow-changes to see what the new ones change")


@attrs.frozen
class OutputCheck:
    """One output of the original run against the reproduction."""

    name: str
    old: str | None
    new: str | None
    frames: str = ""  # for a video whose bytes differ: what decoding both files says

    @property
    def identical(self) -> bool:
        return self.old is not None and self.old == self.new

    def line(self) -> str:
        if self.identical:
            return f"{self.name}: bit-identical"
        if self.old is None or self.new is None:
            return f"{self.name}: DIFFERS (only the {'reproduction' if self.old is None else 'archive'} has it)"
        return (f"{self.name}: DIFFERS (sha256 {self.old[:12]} → {self.new[:12]})"
                + (f": {self.frames}" if self.frames else ""))


@attrs.frozen
class ReproReport:
    """The reproduction's archive, its per-output verdicts, and the steps and lock entries that differ."""

    archive: Path
    outputs: tuple[OutputCheck, ...]
    lock_diffs: tuple[tuple[str, Any, Any], ...]
    steps: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (node, ("key", "output") or a part of it)
    computed: int = 0  # steps computed rather than taken from the cache
    total: int = 0

    @property
    def identical(self) -> bool:
        return all(o.identical for o in self.outputs)

    def lines(self) -> list[str]:
        """Human-readable report."""
        out = [o.line() for o in self.outputs]
        if not self.identical:
            out += self._step_lines()
            out.append(self._lock_headline())
            out += [f"  {k}: {show(a)} → {show(b)}" for k, a, b in self.lock_diffs]
        out.append(f"{self.computed} of {self.total} steps recomputed; reproduction archived at {self.archive}")
        return out

    def _lock_headline(self) -> str:
        if self.lock_diffs:
            return "lock entries that differ:"
        if self.steps and "key" in self.steps[0][1]:  # later keys follow from earlier outputs
            return ("no lock entry differs: a setting differs (compare the two archives with "
                    f"`wanflow diff`; the reproduction is {self.archive})")
        return "no lock entry differs: a step is not deterministic here"

    def _step_lines(self) -> list[str]:
        if not self.steps:
            return []
        out = ["steps that differ: " + ", ".join(f"{n} ({', '.join(w)})" for n, w in self.steps)]
        first, what = self.steps[0]
        out.append(f"  first: {first}: " + ("same key, other output: it is not deterministic here"
                                             if what == ("output",) else
                                             "its key differs: a setting, input, weight or version changed"))
        return out


def reproduce(archive: Path, load_text: Callable[[str, Path], Any],
              pipeline_for: Callable[[str], Pipeline], cache: Cache, opts: RunOptions, *,
              use_cache: bool = False, allow_changes: bool = False,
              describe: Describe | None = None) -> ReproReport:
    """Check the archive's inputs and weights, recompute every step (``use_cache``: reuse hits), compare.

    Raises ``ArchiveError`` naming every input or weight that is missing or differs, before any
    step runs; ``allow_changes`` runs anyway (missing inputs still stop it) to show what changes."""
    arc = open_archive(archive)
    resolved, pipeline = _checked(arc, load_text, pipeline_for, cache, allow_changes)
    outcome = run_job(resolved, pipeline, cache, attrs.evolve(opts, no_cache=not use_cache))
    checks = compare_outputs(arc, outcome.archive, outcome.lock, describe)
    steps = tuple(step_differences(arc.lock, outcome.lock))
    return ReproReport(outcome.archive, checks, tuple(lock_differences(arc.lock, outcome.lock)), steps,
                       sum(not r.hit for r in outcome.results.values()), len(outcome.results))


def _checked(arc: Archive, load_text: Callable[[str, Path], Any], pipeline_for: Callable[[str], Pipeline],
             cache: Cache, allow_changes: bool) -> tuple[Any, Pipeline]:
    """The archive's resolved recipe and pipeline, once its inputs and weights are the run's."""
    problems = input_problems(arc)  # first: a missing input would stop the recipe from loading
    if problems:
        raise ArchiveError(_refusal(arc, problems, INPUT_FIX))
    resolved = load_text(arc.resolved_text, arc.path / "resolved.toml")
    problems = named_input_problems(arc.lock, resolved.input_files(), cache.memo.digest)
    if problems:
        raise ArchiveError(_refusal(arc, problems, INPUT_FIX))
    pipeline = pipeline_for(resolved.model)
    problems = weight_problems(arc.lock, plan_job(resolved, pipeline, cache))
    if problems and not allow_changes:
        raise ArchiveError(_refusal(arc, problems, WEIGHT_FIX))
    return resolved, pipeline


def named_input_problems(lock: Mapping[str, Any], files: Mapping[str, Path], digest: Digest) -> list[str]:
    """The inputs ``resolved.toml`` names (perhaps edited) against those the run used."""
    want = lock.get("inputs", {})
    problems = []
    for key, path in sorted(files.items()):
        if not is_archived_input(key):
            continue
        got = content_digest(Path(path), digest) if Path(path).exists() else None
        if key not in want:
            problems.append(f"input {key}: resolved.toml names {path}, but the run had no such input")
        elif got is None:
            problems.append(f"input {key}: resolved.toml names {path}, which is missing")
        elif got != want[key].get("sha256"):
            problems.append(f"input {key}: resolved.toml names {path}, whose sha256 {got[:16]}… is not the "
                            f"run's {str(want[key].get('sha256'))[:16]}…")
    problems += [f"input {key}: the run had it, resolved.toml names no such input" for key in sorted(want)
                 if key not in files]
    return problems


def weight_problems(lock: Mapping[str, Any], the_plan: Plan) -> list[str]:
    """Every weight the archive's run used that this plan does not use with the same digest."""
    old = lock.get("weights", {})
    new = {f"{ps.name}/{role}": (ps.spec.weights[role].path, digest)
           for ps in the_plan.steps for role, digest in ps.weights.items()}
    problems, seen = [], set()
    for entry in sorted(set(old) | set(new)):
        want = old.get(entry, {})
        path, got = new.get(entry, (None, None))
        if want.get("sha256") == got or (path, got) in seen:
            continue
        seen.add((path, got))
        if got == ABSENT:
            problems.append(f"weight {entry}: {path} is not on this machine (the run used sha256 "
                            f"{str(want.get('sha256'))[:16]}…)")
        elif path is None:
            problems.append(f"weight {entry}: the run used {want.get('path')} "
                            f"(sha256 {str(want.get('sha256'))[:16]}…); this wanflow's plan has no such weight")
        elif not want:
            problems.append(f"weight {entry}: {path} is new: the run used no such weight")
        else:
            origin = f"{want.get('source', '?')} at revision {want.get('revision', '?')}"
            problems.append(f"weight {entry}: {path} has sha256 {got[:16]}…, the run used "
                            f"{want['sha256'][:16]}… ({origin})")
    return problems


def weight_status(arc: Archive, load_text: Callable[[str, Path], Any],
                  pipeline_for: Callable[[str], Pipeline], cache: Cache) -> list[str]:
    """For ``wanflow import``: does this machine hold the archive's weights (call it offline)."""
    try:
        resolved = load_text(arc.resolved_text, arc.path / "resolved.toml")
        problems = weight_problems(arc.lock, plan_job(resolved, pipeline_for(resolved.model), cache))
    except WanflowError as exc:
        return [f"weights: not checked here ({str(exc).splitlines()[0]}); "
                "`wanflow reproduce` downloads what is missing and checks them"]
    if not problems:
        files = {w.get("sha256") for w in arc.lock.get("weights", {}).values()}
        return [f"weights: all {len(files)} files present with the digests the run used"]
    return ["weights that are not as the run used them (`wanflow reproduce` downloads missing ones):",
            *[f"  {p}" for p in problems]]


def _refusal(arc: Archive, problems: list[str], fix: str) -> str:
    return "\n".join([f"cannot reproduce {arc.path}: it was made from other files than these "
                      "(nothing was computed):", *[f"  {p}" for p in problems], f"  fix: {fix}"])


def compare_outputs(arc: Archive, new_archive: Path, new_lock: Mapping[str, Any],
                    describe: Describe | None = None) -> tuple[OutputCheck, ...]:
    """Per output: both digests, and for one whose bytes differ, what ``describe`` finds (frames)."""
    old_out, new_out = arc.lock.get("outputs", {}), new_lock.get("outputs", {})
    checks = []
    for name in sorted(set(old_out) | set(new_out)):
        check = OutputCheck(name, old_out.get(name, {}).get("sha256"), new_out.get(name, {}).get("sha256"))
        if describe is not None and not check.identical and None not in (check.old, check.new):
            check = attrs.evolve(check, frames=describe(arc.outputs()[name], new_archive / "outputs" / name))
        checks.append(check)
    return tuple(checks)
