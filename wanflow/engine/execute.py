"""Run a plan in dependency order: reuse hits, compute misses once (locked), store the outputs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.engine.cache import Cache
from wanflow.engine.events import Bars, EventLog
from wanflow.engine.explain import reasons_for
from wanflow.engine.index import Entry
from wanflow.engine.keys import key_of
from wanflow.engine.locks import key_lock
from wanflow.engine.plan import Plan, PlannedStep
from wanflow.engine.step import Progress
from wanflow.engine.store import CorruptObject, bytes_to_tensors, tensors_to_bytes
from wanflow.errors import EngineError

log = structlog.get_logger(__name__)


@attrs.frozen
class StepResult:
    """How one node of a run went."""

    node: str
    kind: str
    key: str
    digest: str
    hit: bool
    duration_s: float
    bytes: int
    reasons: tuple[str, ...] = ()


@attrs.define
class Session:
    """State shared by the jobs of one invocation (a sweep): with no_cache, only keys computed
    in this session count as hits, so shared steps still run once."""

    no_cache: bool = False
    fresh: set[str] = attrs.field(factory=set)


def encode(output: str, value: Any, node: str) -> bytes:
    """Turn a step's return value into the bytes the store keeps."""
    if output == "bytes":
        if not isinstance(value, (bytes, bytearray)):
            raise EngineError(f"step {node!r} declares bytes output but returned "
                              f"{type(value).__name__}")
        return bytes(value)
    if not isinstance(value, Mapping):
        raise EngineError(f"step {node!r} declares tensors output but returned "
                          f"{type(value).__name__}: return a dict of named tensors")
    return tensors_to_bytes(dict(value))


def decode(output: str, data: bytes) -> Any:
    """The inverse of :func:`encode`."""
    return data if output == "bytes" else bytes_to_tensors(data)


class _Context:
    """What a running step sees: its params, inputs, files, weights, progress and checkpoints."""

    def __init__(self, ex: Executor, ps: PlannedStep, key: str):
        self._ex, self._ps, self._key = ex, ps, key
        self.params = dict(ps.params)
        self.resumed_from: int | None = None

    def input(self, role: str) -> Any:
        """The output of the node planned for ``role``; a role the plan lacks is a bug (exit 1)."""
        node = self._ps.spec.inputs.get(role)
        if node is None:
            raise LookupError(f"step {self._ps.name!r} asked for input {role!r}, but its plan gives "
                              f"only {sorted(self._ps.spec.inputs)}: the pipeline planned it wrong")
        return self._ex.load(node)

    def file(self, role: str) -> Path:
        return Path(self._ps.spec.files[role])

    def weight(self, role: str) -> Path:
        return Path(self._ps.spec.weights[role].path)

    def progress(self, total: int, desc: str = "", unit: str = "it") -> Progress:
        return self._ex.bars(total, desc or self._ps.name, unit)

    def load_partial(self) -> tuple[int, Any] | None:
        """The last saved partial state of this key, or None (corrupt ones are ignored)."""
        found = self._ex.cache.index.partial(self._key)
        if found is None or self._ex.session.no_cache:  # --no-cache recomputes from scratch
            return None
        try:
            data = self._ex.cache.store.get(found["digest"])
        except CorruptObject as exc:
            log.warning("partial.corrupt", node=self._ps.name, error=str(exc))
            return None
        self.resumed_from = int(found["done"])
        self._ex.events.emit("step.resume", node=self._ps.name, done=self.resumed_from)
        return self.resumed_from, decode(found["output"], data)

    def save_partial(self, done: int, state: Any) -> None:
        """Persist partial state (atomically) so a killed run resumes from ``done``."""
        output = "bytes" if isinstance(state, (bytes, bytearray)) else "tensors"
        index, store = self._ex.cache.index, self._ex.cache.store
        previous = index.partial(self._key)
        digest = store.put(encode(output, state, self._ps.name))
        index.set_partial(self._key, done, digest, output)
        if previous and previous["digest"] != digest:
            store.drop(previous["digest"])


class Executor:
    """Executes one plan against one cache, recomputing on demand what turns out corrupt."""

    def __init__(self, plan: Plan, cache: Cache, events: EventLog | None = None,
                 bars: Bars | None = None, session: Session | None = None):
        self.plan, self.cache = plan, cache
        self.events = events or EventLog()
        self.bars = bars or Bars(quiet=True)
        self.session = session or Session()
        self.results: dict[str, StepResult] = {}
        self._keys: dict[str, str] = {}
        self._outputs = {ps.name: ps.spec.step.output for ps in plan.steps}

    def run(self) -> dict[str, StepResult]:
        """Every node, in order (a plan made without some weights is refused before any runs)."""
        absent = self.plan.absent_weights()
        if absent:
            raise EngineError("this plan was made without the weights of " + ", ".join(absent)
                              + ": it can be explained but not run; run with downloads allowed")
        for ps in self.plan.steps:
            self._run_node(ps)
        return self.results

    def _lookup(self, key: str) -> Entry | None:
        """A usable index entry: allowed by the session and backed by an object on disk."""
        if self.session.no_cache and key not in self.session.fresh:
            return None
        entry = self.cache.index.get(key)
        return entry if entry is not None and self.cache.store.has(entry.digest) else None

    def _run_node(self, ps: PlannedStep) -> StepResult:
        inputs = {r: self.results[src].digest for r, src in ps.spec.inputs.items()}
        fp = ps.fingerprint(inputs, self.plan.env)
        key = self._keys[ps.name] = key_of(fp)
        self.events.emit("step.start", node=ps.name, kind=ps.spec.step.kind, key=key)
        entry = self._lookup(key)
        if entry is None:
            with key_lock(self.cache.locks, key):
                entry = self._lookup(key)  # another run may have made it while we waited
                if entry is None:
                    reasons = tuple(reasons_for(self.cache.index.last(self.plan.scope, ps.name), fp))
                    return self._finish(ps, fp, self._compute(ps, key, reasons))
        self.cache.index.touch(entry.digest)
        res = StepResult(ps.name, entry.kind, key, entry.digest, True, 0.0, entry.size)
        self.events.emit("step.hit", node=ps.name, key=key, bytes=entry.size)
        return self._finish(ps, fp, res)

    def _finish(self, ps: PlannedStep, fp: dict[str, Any], res: StepResult) -> StepResult:
        self.results[ps.name] = res
        self.cache.index.set_last(self.plan.scope, ps.name, fp)
        return res

    def _compute(self, ps: PlannedStep, key: str, reasons: tuple[str, ...]) -> StepResult:
        """Run the step, store its output, index it (the caller holds the key's lock)."""
        self.events.emit("step.miss", node=ps.name, key=key, reasons=list(reasons))
        t0 = time.perf_counter()
        value = ps.spec.step.run(_Context(self, ps, key))
        data = encode(ps.spec.step.output, value, ps.name)
        digest = self.cache.store.put(data)
        dt = time.perf_counter() - t0
        self.cache.index.put(key, Entry(digest, ps.spec.step.output, ps.name,
                                        ps.spec.step.kind, len(data), dt))
        self._drop_partial(key, digest)
        self.session.fresh.add(key)
        self.events.emit("step.done", node=ps.name, key=key, duration_s=round(dt, 6),
                         bytes=len(data))
        return StepResult(ps.name, ps.spec.step.kind, key, digest, False, dt, len(data), reasons)

    def _drop_partial(self, key: str, digest: str) -> None:
        found = self.cache.index.partial(key)
        if found is not None:
            self.cache.index.clear_partial(key)
            if found["digest"] != digest:
                self.cache.store.drop(found["digest"])

    def read(self, node: str) -> bytes:
        """A node's output bytes, verified; a corrupt object is logged and recomputed."""
        res = self.results[node]
        try:
            return self.cache.store.get(res.digest)
        except CorruptObject as exc:
            log.warning("object.corrupt", node=node, error=str(exc))
            self.events.emit("step.corrupt", node=node, key=res.key)
            self.cache.store.drop(res.digest)
            self.cache.index.forget(res.key)
            ps = self.plan.get(node)
            with key_lock(self.cache.locks, res.key):
                new = self._compute(ps, res.key, ("its stored output was corrupt",))
            self.results[node] = new
            return self.cache.store.get(new.digest)

    def load(self, node: str) -> Any:
        """A node's output as the step kind produced it (bytes or named tensors)."""
        return decode(self._outputs[node], self.read(node))
