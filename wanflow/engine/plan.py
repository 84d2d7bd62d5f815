"""Planning: a pure function from resolved values and step specs to a checked, ordered DAG."""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.keys import canonical_json, is_policy_field
from wanflow.engine.step import StepSpec, step_config
from wanflow.errors import EngineError

Digest = Callable[[Path], str]

#: The digest of a weight that is not on this machine (a plan made for explain or diff).
ABSENT = "absent"


@attrs.frozen
class PlannedStep:
    """A spec with the params it reads picked out and its files and weights hashed."""

    spec: StepSpec
    params: Mapping[str, Any]
    config: Mapping[str, Any]  # the step object's own configuration (step_config)
    files: Mapping[str, str]  # role -> sha256
    weights: Mapping[str, str]  # role -> sha256

    @property
    def name(self) -> str:
        return self.spec.name

    def fingerprint(self, inputs: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Any]:
        """Everything that decides this step's output, given its inputs' output digests."""
        step = self.spec.step
        return {"kind": step.kind, "version": step.version, "config": dict(self.config),
                "params": dict(self.params), "inputs": dict(inputs), "files": dict(self.files),
                "weights": dict(self.weights), "plugin": self.spec.plugin,
                "uses": list(self.spec.uses), "env": dict(env)}


@attrs.frozen
class Plan:
    """Steps in dependency order; ``scope`` names the recipe for per-node history."""

    scope: str
    steps: tuple[PlannedStep, ...]
    env: Mapping[str, str]

    def absent_weights(self) -> list[str]:
        """"node: role" of every weight this plan was made without (it cannot run)."""
        return [f"{s.name}: {role}" for s in self.steps for role, d in s.weights.items() if d == ABSENT]

    def get(self, name: str) -> PlannedStep:
        return next(s for s in self.steps if s.name == name)

    def downstream(self, names: set[str]) -> set[str]:
        """The given nodes and every node that depends on them."""
        out = set(names)
        for s in self.steps:  # topological order: parents come first
            if any(src in out for src in s.spec.inputs.values()):
                out.add(s.name)
        return out


@functools.cache
def runtime_env() -> dict[str, str]:
    """Versions that can change the numbers of every step (torch), read without importing it."""
    try:
        return {"torch": importlib.metadata.version("torch")}
    except importlib.metadata.PackageNotFoundError:
        return {"torch": "absent"}


def select_params(values: Mapping[str, Any], reads: Sequence[str], node: str) -> dict[str, Any]:
    """The resolved values a node reads, minus execution-policy fields."""
    picked: dict[str, Any] = {}
    for pattern in reads:
        if any(c in pattern for c in "*?["):
            picked.update({k: v for k, v in values.items() if fnmatch.fnmatchcase(k, pattern)})
        elif pattern in values:
            picked[pattern] = values[pattern]
        else:
            raise EngineError(f"step {node!r} reads {pattern!r}, which the resolved recipe "
                              "does not have: fix the step's `reads`")
    return {k: v for k, v in sorted(picked.items()) if not is_policy_field(k)}


def plan(values: Mapping[str, Any], specs: Sequence[StepSpec], scope: str,
         digest: Digest, env: Mapping[str, str] | None = None) -> Plan:
    """Check the DAG, order it, pick each node's params and hash its files (no other I/O)."""
    ordered = _topological(specs)
    steps = tuple(
        PlannedStep(spec=s, params=select_params(values, s.params_read, s.name),
                    config=_config(s),
                    files={r: _hash(digest, p, s.name, r) for r, p in sorted(s.files.items())},
                    weights={r: _hash(digest, w.path, s.name, r) if w.present else ABSENT
                             for r, w in sorted(s.weights.items())})
        for s in ordered)
    return Plan(scope=scope, steps=steps, env=dict(env if env is not None else runtime_env()))


def _config(spec: StepSpec) -> dict[str, Any]:
    """The node's step configuration, checked keyable now rather than when it runs."""
    config = step_config(spec.step)
    try:
        canonical_json(config)
    except EngineError as exc:
        raise EngineError(f"step {spec.name!r} ({spec.step.kind}): its configuration cannot be "
                          f"part of its key ({exc}); give it plain values, or mark the field "
                          "NOT_KEYED if it cannot change the step's output") from None
    return config


def _hash(digest: Digest, path: Path, node: str, role: str) -> str:
    """Hash one file, turning a missing one into an error that names it."""
    try:
        return digest(Path(path))
    except FileNotFoundError:
        raise EngineError(f"step {node!r}: {role} file {path} does not exist: "
                          "check the recipe's paths") from None


def _topological(specs: Sequence[StepSpec]) -> list[StepSpec]:
    """Dependency order (stable for independent nodes); refuse duplicates, dangling refs, cycles."""
    by_name: dict[str, StepSpec] = {}
    for s in specs:
        if s.name in by_name:
            raise EngineError(f"two steps are named {s.name!r}: step names must be unique")
        by_name[s.name] = s
    for s in specs:
        missing = [src for src in s.inputs.values() if src not in by_name]
        if missing:
            raise EngineError(f"step {s.name!r} takes input from unknown step(s) {missing}")
    done: list[StepSpec] = []
    placed: set[str] = set()
    while len(done) < len(specs):
        ready = [s for s in specs if s.name not in placed
                 and all(src in placed for src in s.inputs.values())]
        if not ready:
            stuck = sorted(set(by_name) - placed)
            raise EngineError(f"the steps {stuck} depend on each other in a cycle")
        done.append(ready[0])
        placed.add(ready[0].name)
    return done
