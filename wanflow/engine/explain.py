"""Why each step hits or misses: the exact dotted key, input or weight that changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.columns import NODE_WIDTH
from wanflow.engine.cache import Cache
from wanflow.engine.keys import key_of
from wanflow.engine.plan import ABSENT, Plan, PlannedStep

NEVER_RUN = "never run"
NO_WEIGHTS = "weights not present"


def dotted_label(key: str) -> str:
    """``sampler.cfg`` → ``[sampler].cfg``, the way the recipe file spells it."""
    head, _, tail = key.rpartition(".")
    return f"[{head}].{tail}" if head else key


def show(value: Any) -> str:
    """A short, unambiguous rendering of a value for one line of output."""
    text = json.dumps(value, sort_keys=True, default=str) if value is not None else "unset"
    return text if len(text) <= 48 else text[:45] + "…"


def _short(digest: str | None) -> str:
    return digest[:10] + "…" if digest else "none"


def _map_changes(old: Mapping[str, Any], new: Mapping[str, Any], what: str) -> list[str]:
    """One line per role whose digest differs between two fingerprints."""
    return [f"{what} `{role}` changed ({_short(old.get(role))} → {_short(new.get(role))})"
            for role in sorted(set(old) | set(new)) if old.get(role) != new.get(role)]


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every difference between the fingerprint a node had last time and the one it has now."""
    out: list[str] = []
    for field in ("kind", "version", "plugin", "uses"):
        if old.get(field) != new.get(field):
            out.append(f"step {field} {show(old.get(field))} → {show(new.get(field))}")
    oc, nc = old.get("config", {}), new.get("config", {})
    out += [f"step setting `{k}` {show(oc.get(k))} → {show(nc.get(k))}"
            for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
    old_env, new_env = old.get("env", {}), new.get("env", {})
    out += [f"{k} {old_env.get(k)} → {new_env.get(k)}"
            for k in sorted(set(old_env) | set(new_env)) if old_env.get(k) != new_env.get(k)]
    op, np_ = old.get("params", {}), new.get("params", {})
    out += [f"{dotted_label(k)} {show(op.get(k))} → {show(np_.get(k))}"
            for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)]
    out += _map_changes(old.get("files", {}), new.get("files", {}), "input file")
    out += _map_changes(old.get("weights", {}), new.get("weights", {}), "weight")
    out += _map_changes(old.get("inputs", {}), new.get("inputs", {}), "output of input")
    return out


def reasons_for(last: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> list[str]:
    """Why a key misses: its changes since last time, or that it never ran."""
    if last is None:
        return [NEVER_RUN]
    found = changes(last, fingerprint)
    return found or ["its output was evicted or found corrupt"]


@attrs.frozen
class Explanation:
    """One step's verdict: ``hit`` or ``miss``, and why."""

    node: str
    kind: str
    status: str
    reasons: tuple[str, ...] = ()
    key: str | None = None

    def line(self) -> str:
        """``denoise  miss because [sampler].cfg 5.0 → 6.0``."""
        if self.status == "hit":
            return f"{self.node:<{NODE_WIDTH}} hit"
        if self.reasons == (NO_WEIGHTS,):
            return f"{self.node:<{NODE_WIDTH}} will run: {NO_WEIGHTS}"
        return f"{self.node:<{NODE_WIDTH}} miss because " + "; ".join(self.reasons)


def _waiting(ps: PlannedStep, waiting: list[str], last: Mapping[str, Any] | None,
             env: Mapping[str, str]) -> Explanation:
    """A step whose upstream must run first: it misses (unless that output comes out the same)."""
    fp = ps.fingerprint({}, env)
    own = [NEVER_RUN] if last is None else [
        r for r in changes(last, fp) if not r.startswith("output of input")]
    why = [f"upstream `{w}` runs first" for w in waiting] + own
    return Explanation(ps.name, ps.spec.step.kind, "miss", tuple(dict.fromkeys(why)))


def explain(plan: Plan, cache: Cache) -> list[Explanation]:
    """Predict, without running anything, which steps hit and why the others miss."""
    digests: dict[str, str] = {}
    out: list[Explanation] = []
    for ps in plan.steps:
        last = cache.index.last(plan.scope, ps.name)
        if ABSENT in ps.weights.values():
            out.append(Explanation(ps.name, ps.spec.step.kind, "miss", (NO_WEIGHTS,)))
            continue
        waiting = [src for src in ps.spec.inputs.values() if src not in digests]
        if waiting:
            out.append(_waiting(ps, waiting, last, plan.env))
            continue
        fp = ps.fingerprint({r: digests[s] for r, s in ps.spec.inputs.items()}, plan.env)
        key = key_of(fp)
        entry = cache.index.get(key)
        if entry is not None and cache.store.has(entry.digest):
            digests[ps.name] = entry.digest
            out.append(Explanation(ps.name, ps.spec.step.kind, "hit", (), key))
        else:
            out.append(Explanation(ps.name, ps.spec.step.kind, "miss",
                                   tuple(reasons_for(last, fp)), key))
    return out
