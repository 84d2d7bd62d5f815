"""The content of a run's ``lock.toml``: versions, runtime, weights, inputs, steps, outputs."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from wanflow.engine.archive import ARCHIVE_SCHEMA, ArchivedInput
from wanflow.engine.execute import StepResult
from wanflow.engine.plan import Plan

#: Lock sections compared by `reproduce` and `diff` (steps and outputs are compared apart).
COMPARED_SECTIONS = ("versions", "runtime", "plugins", "weights", "inputs")
#: In these sections only the digests are compared: where a file lies, and the branch or commit
#: it was fetched by, cannot change a number when its bytes are the same.
BY_DIGEST = ("weights", "inputs")


def versions(plan: Plan) -> dict[str, str]:
    """wanflow, python, torch and platform versions."""
    import wanflow

    return {"wanflow": wanflow.__version__, "recipe_schema": str(wanflow.SCHEMA_VERSION),
            "python": platform.python_version(), "torch": plan.env.get("torch", "absent"),
            "imageio-ffmpeg": _package_version("imageio-ffmpeg"),  # it ships the ffmpeg that encodes videos
            "platform": f"{sys.platform}-{platform.machine()}"}


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def weights(plan: Plan) -> dict[str, dict[str, str]]:
    """Every weight file a step used: path, source, revision (the commit when known) and digest."""
    out: dict[str, dict[str, str]] = {}
    for ps in plan.steps:
        for role, w in sorted(ps.spec.weights.items()):
            out[f"{ps.name}/{role}"] = {"path": str(w.path), "source": w.source,
                                        "revision": w.revision, "sha256": ps.weights[role]}
    return out


def inputs(stored: Mapping[str, ArchivedInput]) -> dict[str, dict[str, str]]:
    """Every input file of the recipe, by dotted key: its place in the archive, digest and own name."""
    return {k: {"path": a.rel, "sha256": a.sha256, "name": a.name} for k, a in sorted(stored.items())}


def steps(results: Mapping[str, StepResult], plan: Plan) -> dict[str, dict[str, Any]]:
    """Every step's key, hit/miss, duration, size and output digest."""
    return {r.node: {"kind": r.kind, "version": plan.get(r.node).spec.step.version,
                     "key": r.key, "hit": r.hit, "duration_s": round(r.duration_s, 6),
                     "bytes": r.bytes, "output": r.digest} for r in results.values()}


def build_lock(*, name: str, job: str, plan: Plan, results: Mapping[str, StepResult],
               runtime: Mapping[str, Any], plugins: Iterable[tuple[str, str]],
               inputs_stored: Mapping[str, ArchivedInput],
               outputs: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """Everything needed to reproduce a run and to tell why a reproduction differs."""
    return {
        "schema": ARCHIVE_SCHEMA, "name": name, "job": job,
        "versions": versions(plan), "runtime": {k: str(v) for k, v in runtime.items()},
        "plugins": {n: v for n, v in sorted(plugins)}, "weights": weights(plan),
        "inputs": inputs(inputs_stored), "steps": steps(results, plan),
        "outputs": {n: {"step": node, "sha256": d} for n, (node, d) in sorted(outputs.items())},
    }


def flatten(section: Any, prefix: str) -> dict[str, Any]:
    """Nested tables → ``a.b.c`` keys, for comparing two locks entry by entry."""
    if not isinstance(section, Mapping):
        return {prefix: section}
    out: dict[str, Any] = {}
    for k, v in section.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def lock_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                     sections: Iterable[str] = COMPARED_SECTIONS) -> list[tuple[str, Any, Any]]:
    """(entry, old, new) for every lock entry that differs in the compared sections."""
    diffs = []
    for sec in sections:
        a, b = flatten(old.get(sec, {}), sec), flatten(new.get(sec, {}), sec)
        keys = sorted(k for k in set(a) | set(b) if sec not in BY_DIGEST or k.endswith(".sha256"))
        diffs += [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
    return diffs


def step_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(step, which of "key" and "output" differ) for every step whose lock entry differs, in run order."""
    a, b = old.get("steps", {}), new.get("steps", {})
    order = list(b) + [n for n in a if n not in b]
    out = []
    for node in order:
        what = tuple(f for f in ("key", "output") if a.get(node, {}).get(f) != b.get(node, {}).get(f))
        if what:
            out.append((node, what))
    return out
