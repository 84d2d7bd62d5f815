"""One job: plan, execute, archive. A recipe with ``[sweep]``: every job, sharing steps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import tomlkit

from wanflow.engine import lock as lockfile
from wanflow.engine.archive import ArchiveWriter, portable_resolved, safe_relpath, utc_stamp
from wanflow.engine.cache import Cache
from wanflow.engine.events import Bars, EventCallback, EventLog
from wanflow.engine.execute import Executor, Session, StepResult
from wanflow.engine.keys import digest_bytes
from wanflow.engine.plan import Plan, plan, runtime_env
from wanflow.engine.step import Pipeline, describe_runtime


class Resolved(Protocol):
    """The parts of a resolved recipe the engine reads."""

    name: str
    model: str
    text: str
    values: Mapping[str, Any]

    def canonical_toml(self) -> str: ...

    def input_files(self) -> dict[str, Path]: ...

    def sweep_jobs(self) -> list[Any]: ...


def job_label(resolved: Any) -> str:
    """The sweep coordinates of a job ("" outside sweeps)."""
    return str(getattr(resolved, "job_label", "") or "")


def plan_job(resolved: Resolved, pipeline: Pipeline, cache: Cache) -> Plan:
    """The plan of one job, its files hashed through the cache's weight memo.

    The keys' environment holds the torch version and what the pipeline reports of the runtime
    (the effective device and dtype behind "auto", thread count): a CPU result never serves a
    GPU run."""
    scope = resolved.name + (f"|{job_label(resolved)}" if job_label(resolved) else "")
    env = {**runtime_env(), **describe_runtime(pipeline, resolved)}
    values = keyed_values(resolved, cache.memo.digest)
    return plan(values, list(pipeline.steps(resolved)), scope, cache.memo.digest, env)


def keyed_values(resolved: Resolved, digest: Callable[[Path], str]) -> dict[str, Any]:
    """The resolved values with every input file's path replaced by ``sha256:<its digest>``.

    Where a file lies is not what it holds: a step that reads every value (the saver, whose
    metadata carries the recipe digest) must give the same key and bytes for the same image in
    another folder, e.g. an archive's ``inputs/`` on another machine."""
    values = dict(resolved.values)
    for key, path in resolved.input_files().items():
        if Path(path).is_file():
            _replace(values, key.split("."), f"sha256:{digest(Path(path))}")
    return values


def _replace(values: dict[str, Any], parts: list[str], new: str) -> None:
    """Set a dotted key in flat values, also inside a list value (``lora.0.path``)."""
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in values:
            values[head] = _set_in(values[head], parts[n:], new)
            return


def _set_in(node: Any, rest: list[str], new: str) -> Any:
    if not rest:
        return new
    node = list(node) if isinstance(node, list) else dict(node)
    at = int(rest[0]) if isinstance(node, list) else rest[0]
    node[at] = _set_in(node[at], rest[1:], new)
    return node


@attrs.frozen
class RunOutcome:
    """A finished job: its archive and how each step went."""

    archive: Path
    plan: Plan
    results: Mapping[str, StepResult]
    lock: Mapping[str, Any]


@attrs.frozen
class RunOptions:
    """How to run (none of this changes any output)."""

    runs_dir: Path
    no_cache: bool = False
    quiet: bool = False
    plugins: tuple[tuple[str, str], ...] = ()
    on_event: EventCallback | None = None


def run_job(resolved: Resolved, pipeline: Pipeline, cache: Cache, opts: RunOptions,
            session: Session | None = None, the_plan: Plan | None = None) -> RunOutcome:
    """Run one job and archive it; an interrupted run leaves only an incomplete folder."""
    the_plan = the_plan if the_plan is not None else plan_job(resolved, pipeline, cache)
    writer = ArchiveWriter(opts.runs_dir, resolved.name)
    writer.write_text("recipe.toml", resolved.text)
    stored = writer.add_inputs(resolved.input_files(), cache.memo.digest)
    writer.write_text("resolved.toml", portable_resolved(resolved.canonical_toml(), stored))
    events = EventLog(opts.on_event)
    events.attach(writer.tmp / "events.jsonl")
    try:
        events.emit("run.start", recipe=resolved.name, job=job_label(resolved))
        ex = Executor(the_plan, cache, events, Bars(opts.quiet), session or Session(opts.no_cache))
        ex.run()
        outputs = archive_outputs(ex, writer)
        lock = lockfile.build_lock(
            name=resolved.name, job=job_label(resolved), plan=the_plan, results=ex.results,
            runtime=describe_runtime(pipeline, resolved), plugins=opts.plugins,
            inputs_stored=stored, outputs=outputs)
        events.emit("run.done", hits=sum(r.hit for r in ex.results.values()),
                    misses=sum(not r.hit for r in ex.results.values()))
    finally:
        events.close()
    archive = writer.finish(run_key(ex.results)[:8], lock)
    cache.gc()
    return RunOutcome(archive, the_plan, dict(ex.results), lock)


def archive_outputs(ex: Executor, writer: ArchiveWriter) -> dict[str, tuple[str, str]]:
    """Copy the outputs meant for the archive (verified; recomputed if corrupt)."""
    outputs = {}
    for ps in ex.plan.steps:
        if ps.spec.archive_as:
            writer.add_output(ps.spec.archive_as, ex.read(ps.name))
            outputs[ps.spec.archive_as] = (ps.name, ex.results[ps.name].digest)
    return outputs


def run_key(results: Mapping[str, StepResult]) -> str:
    """A run's identity: the hash of its step keys (equal runs share it)."""
    return digest_bytes("\n".join(sorted(r.key for r in results.values())).encode())


def run_recipe(resolved: Resolved, pipeline_for: Callable[[str], Pipeline], cache: Cache,
               opts: RunOptions) -> list[RunOutcome]:
    """Every job of a recipe; steps shared between jobs run once; a sweep gets an index.

    Every job is planned before the first one runs: a problem in the last job of a sweep (a
    missing weight, a refused setting) is reported before minutes of work on the first."""
    jobs = resolved.sweep_jobs()
    session = Session(opts.no_cache)
    pipelines = [pipeline_for(job.model) for job in jobs]
    plans = [plan_job(job, pipeline, cache) for job, pipeline in zip(jobs, pipelines, strict=True)]
    outcomes = [run_job(job, pipeline, cache, opts, session, the_plan)
                for job, pipeline, the_plan in zip(jobs, pipelines, plans, strict=True)]
    if len(jobs) > 1:
        write_sweep_index(opts.runs_dir, resolved.name, jobs, outcomes)
    return outcomes


def write_sweep_index(runs_dir: Path, name: str, jobs: Iterable[Any],
                      outcomes: list[RunOutcome]) -> Path:
    """``runs/<name>/sweep-<utc>.toml``: each job's label and archive, written atomically."""
    parent = Path(runs_dir) / safe_relpath(name, "recipe name")
    doc = {"name": name, "jobs": [
        {"job": job_label(j), "archive": o.archive.name,
         "outputs": {n: v["sha256"] for n, v in o.lock["outputs"].items()}}
        for j, o in zip(jobs, outcomes, strict=True)]}
    target = parent / f"sweep-{utc_stamp()}.toml"
    tmp = parent / f".{target.name}.{os.getpid()}"
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(tmp, target)
    return target
