"""Where every component's weights live, decided before anything loads, and what each step peaks at.

A pure function of numbers: the budgets, the policy, each component's weight bytes (a DiT's per
block, `wanflow.memory.sizes`) and each step's activation estimate (`wanflow.memory.estimates`).
No torch, no probing of free memory: the same inputs always give the same plan.

Tiers. A component's *home* is where its weights wait between the steps that use it: ``device``
(resident on the compute device), ``host`` (host memory, pinned on CUDA, copied in for its
step) or ``disk`` (only its checkpoint file, read again when needed). A DiT's blocks each have
a tier during the denoise step: ``device`` (resident), ``host`` (copied in just before the block
runs, the next one prefetched while it computes) or ``disk`` (read from the memory-mapped file
just before it runs, the next one read ahead). In a CPU-only run the compute device *is* host
memory: ``device`` means "in RAM", and there is no separate host tier.

Policies, fastest first (``auto`` takes the first that fits):

- ``none``: every component resident on the device for the whole run.
- ``offload``: one component on the device at a time, the others waiting in host memory (a CPU
  run: released, and read from the file again when their step comes).
- ``stream``: as offload, and DiT blocks that do not fit stay in host memory and are copied in
  block by block (a CPU run has nothing to stream to: the same as offload).
- ``disk``: as stream, and what the host budget cannot hold (blocks first kept in host memory,
  then components) is read from disk when it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import attrs

from wanflow.errors import WanflowError
from wanflow.memory.sizes import ComponentSize

Tier = Literal["device", "host", "disk"]
Policy = Literal["auto", "none", "offload", "stream", "disk"]
POLICIES: tuple[str, ...] = ("none", "offload", "stream", "disk")  # fastest first
GIB = 1024**3
#: Swapped DiT blocks on the device at once in a device run: the one computing, the next arriving.
DEVICE_SWAP_BLOCKS = 2
#: Pinned staging blocks in host memory while a device run streams blocks from disk.
HOST_STAGING_BLOCKS = 2
#: Streamed (disk-tier) blocks in RAM at once in a CPU run: the one computing and the next, read
#: ahead on the reader thread, both copied out of the mapped file (`placement._on_cpu`, for
#: bit-equality with a resident run). A CPU run has no host tier: its resident blocks are in place.
CPU_STREAM_BLOCKS = 2


class MemoryPlanError(WanflowError):
    """No placement fits the budgets; the message gives the numbers and the cheapest change."""

    def __init__(self, message: str, fixes: Sequence[str] = ()):
        super().__init__(message)
        self.fixes = list(fixes)


@attrs.frozen
class Budgets:
    """Bytes the run may use: on the compute device (None: a CPU-only run) and in host memory."""

    device_bytes: int | None
    host_bytes: int


@attrs.frozen
class StepDemand:
    """A step: the components it runs one after another (A14B: both experts) and its activations."""

    name: str
    components: tuple[str, ...]
    activation_bytes: int


@attrs.frozen
class ComponentPlacement:
    """Where a component's weights wait (``home``) and, for a DiT, each block's tier in its step."""

    name: str
    home: Tier
    blocks: tuple[Tier, ...] = ()
    on_host: bool = False  # computes on the CPU in a device run (the text encoder's --t5_cpu)

    @property
    def resident_blocks(self) -> int:
        return self.blocks.count("device")


@attrs.frozen
class StepPeak:
    """The predicted peak of a step: device bytes (None in a CPU-only run) and host bytes."""

    step: str
    device_bytes: int | None
    host_bytes: int


@attrs.frozen
class MemoryPlan:
    """The placements and predicted peaks of one policy under one pair of budgets."""

    policy: str  # the one chosen (``auto`` resolved)
    asked: str
    budgets: Budgets
    placements: tuple[ComponentPlacement, ...]
    peaks: tuple[StepPeak, ...]

    def placement(self, name: str) -> ComponentPlacement:
        return next(p for p in self.placements if p.name == name)

    def explain(self) -> list[str]:
        """Readable lines: the policy, each component's placement, each step's peak vs budget."""
        cpu = self.budgets.device_bytes is None
        chosen = self.policy if self.asked == self.policy else f"{self.policy} (auto)"
        lines = [f"memory policy {chosen}; budgets: {_budgets(self.budgets)}"]
        lines += [f"  {p.name}: {_describe(p, cpu)}" for p in self.placements]
        for peak in self.peaks:
            device = "" if cpu else f"device {_gib(peak.device_bytes)} of {_gib(self.budgets.device_bytes)}, "
            lines.append(f"  step {peak.step}: peak {device}host {_gib(peak.host_bytes)} of "
                         f"{_gib(self.budgets.host_bytes)}")
        return lines


def plan(budgets: Budgets, policy: Policy, sizes: Sequence[ComponentSize],
         steps: Sequence[StepDemand], *, host_compute: frozenset[str] = frozenset(),
         policies: Sequence[str] = POLICIES, whole_on_device: frozenset[str] = frozenset()) -> MemoryPlan:
    """The placement of every component under ``policy`` that fits the budgets, or MemoryPlanError.

    ``host_compute``: components that compute on the CPU even in a device run. ``policies``: those
    the job's models can honour, fastest first (``auto`` chooses among them, a refusal offers
    only them): a DiT its own loader loads whole is planned under ``none`` and ``offload`` only.
    ``whole_on_device``: components planned whole that cannot compute on the CPU in a device run
    (a refusal does not offer it for them).
    """
    _check_inputs(sizes, steps)
    if policy != "auto" and policy not in policies:
        raise ValueError(f"policy {policy!r} is not among {list(policies)} (the recipe's rules refuse it)")
    by_name = {s.name: s for s in sizes}
    found = _first_fit(budgets, policy, by_name, steps, host_compute, policies)
    if found is not None:
        return found
    raise _refusal(budgets, policy, by_name, steps, host_compute, policies, whole_on_device)


def _first_fit(budgets: Budgets, policy: str, sizes: Mapping[str, ComponentSize],
               steps: Sequence[StepDemand], host_compute: frozenset[str],
               policies: Sequence[str] = POLICIES) -> MemoryPlan | None:
    for candidate in policies if policy == "auto" else (policy,):
        found = _build(budgets, candidate, sizes, steps, host_compute, asked=policy)
        if _fits(found, budgets):
            return found
    return None


def _fits(found: MemoryPlan, budgets: Budgets) -> bool:
    return all(p.host_bytes <= budgets.host_bytes and
               (budgets.device_bytes is None or p.device_bytes <= budgets.device_bytes)
               for p in found.peaks)


# ----------------------------------------------------------------------------- building a plan


def _build(budgets: Budgets, policy: str, sizes: Mapping[str, ComponentSize],
           steps: Sequence[StepDemand], host_compute: frozenset[str], asked: str) -> MemoryPlan:
    """The placement ``policy`` gives, fitting DiT blocks to the budgets (it may still not fit)."""
    cpu = budgets.device_bytes is None
    activation = {n: max((s.activation_bytes for s in steps if n in s.components), default=0)
                  for n in sizes}
    placements = {}
    for name, size in sizes.items():
        on_host = name in host_compute and not cpu
        placements[name] = _place(name, size, policy, cpu, on_host, budgets, activation[name])
    if policy == "disk":
        placements = _fill_host(placements, sizes, budgets, cpu)
    peaks = tuple(_peak(s, placements, sizes, policy, cpu) for s in steps)
    return MemoryPlan(policy, asked, budgets, tuple(placements.values()), peaks)


def _place(name: str, size: ComponentSize, policy: str, cpu: bool, on_host: bool,
           budgets: Budgets, activation: int) -> ComponentPlacement:
    """One component's placement before the host budget is shared out (``disk``: all on disk)."""
    home: Tier = {"none": "device", "offload": "host", "stream": "host", "disk": "disk"}[policy]
    if cpu and home == "host":
        home = "disk"  # a CPU run has no host tier apart from the device: released, read again
    if on_host:
        home = "host" if policy != "disk" else "disk"
    blocks: tuple[Tier, ...] = ("device",) * len(size.block_bytes)
    streams = policy == "disk" or (policy == "stream" and not cpu)
    if size.block_bytes and streams and not on_host:
        room = (budgets.host_bytes if cpu else budgets.device_bytes) - activation
        resident = _resident_blocks(size, room, cpu)
        swapped: Tier = "disk" if policy == "disk" else "host"
        blocks = ("device",) * resident + (swapped,) * (len(size.block_bytes) - resident)
    return ComponentPlacement(name, home, blocks, on_host)


def _resident_blocks(size: ComponentSize, room: int, cpu: bool) -> int:
    """The most blocks (first ones first) that fit ``room`` beside the rest and the swap buffers."""
    for resident in range(len(size.block_bytes), -1, -1):
        if _dit_footprint(size, resident, cpu) <= room:
            return resident
    return 0


def _dit_footprint(size: ComponentSize, resident: int, cpu: bool) -> int:
    """Bytes of a DiT on its compute device with ``resident`` blocks kept there."""
    swapped = size.block_bytes[resident:]
    buffers = (CPU_STREAM_BLOCKS if cpu else DEVICE_SWAP_BLOCKS) * max(swapped, default=0)
    return size.non_block_bytes + sum(size.block_bytes[:resident]) + min(buffers, sum(swapped))


def _fill_host(placements: dict[str, ComponentPlacement], sizes: Mapping[str, ComponentSize],
               budgets: Budgets, cpu: bool) -> dict[str, ComponentPlacement]:
    """``disk`` in a device run: keep in host memory what the host budget holds, blocks first."""
    if cpu:
        return placements
    staging = max((HOST_STAGING_BLOCKS * max(s.block_bytes, default=0) for s in sizes.values()),
                  default=0)
    loading = max((s.largest_tensor_bytes for s in sizes.values()), default=0)
    free = budgets.host_bytes - max(staging, loading) - sum(
        sizes[n].weight_bytes for n, p in placements.items() if p.on_host)
    out = dict(placements)
    for name, p in placements.items():
        blocks = list(p.blocks)
        for i, tier in enumerate(blocks):
            if tier == "disk" and sizes[name].block_bytes[i] <= free:
                blocks[i], free = "host", free - sizes[name].block_bytes[i]
        out[name] = attrs.evolve(p, blocks=tuple(blocks))
    for name, p in out.items():
        if not p.on_host and p.resident_blocks == len(p.blocks) and sizes[name].weight_bytes <= free:
            out[name], free = attrs.evolve(p, home="host"), free - sizes[name].weight_bytes
    return out


# ----------------------------------------------------------------------------- peaks


def _peak(step: StepDemand, placements: Mapping[str, ComponentPlacement],
          sizes: Mapping[str, ComponentSize], policy: str, cpu: bool) -> StepPeak:
    """A step's device and host peak: its components run one at a time, each with its activations."""
    held_host = sum(_held_in_host(placements[n], sizes[n], cpu) for n in placements)
    if cpu:
        return StepPeak(step.name, None, held_host + _cpu_need(step, placements, sizes, policy))
    device = host = 0
    for name in step.components:
        p, size = placements[name], sizes[name]
        if p.on_host:
            extra = 0 if p.home == "host" else size.weight_bytes
            host = max(host, extra + step.activation_bytes)
            continue
        others = sum(sizes[n].weight_bytes for n, q in placements.items()
                     if policy == "none" and n != name and not q.on_host)
        device = max(device, others + _on_device(p, size, cpu) + step.activation_bytes)
        host = max(host, _host_transient(p, size))
    return StepPeak(step.name, device, held_host + host)


def _cpu_need(step: StepDemand, placements: Mapping[str, ComponentPlacement],
              sizes: Mapping[str, ComponentSize], policy: str) -> int:
    """RAM a CPU run's step adds to what stays resident: its models (one at a time) and activations."""
    need = 0
    for name in step.components:
        p = placements[name]
        already = p.home == "device"
        weights = 0 if already else _on_device(p, sizes[name], cpu=True)
        need = max(need, weights + step.activation_bytes)
    return need


def _held_in_host(p: ComponentPlacement, size: ComponentSize, cpu: bool) -> int:
    """Bytes kept in host memory for the whole run: homes in RAM, host-tier blocks."""
    if cpu:
        return size.weight_bytes if p.home == "device" else 0
    held = size.weight_bytes if p.home == "host" else 0
    if p.home != "host":
        held += sum(b for b, tier in zip(size.block_bytes, p.blocks) if tier == "host")
    return held


def _on_device(p: ComponentPlacement, size: ComponentSize, cpu: bool) -> int:
    """Bytes of a component on the compute device while it runs."""
    if not size.block_bytes:
        return size.weight_bytes
    return _dit_footprint(size, p.resident_blocks, cpu)


def _host_transient(p: ComponentPlacement, size: ComponentSize) -> int:
    """Host bytes a device step adds while it brings weights in from disk."""
    if "disk" in p.blocks:
        return HOST_STAGING_BLOCKS * max(size.block_bytes)
    return size.largest_tensor_bytes if p.home == "disk" else 0


# ----------------------------------------------------------------------------- refusal


def _refusal(budgets: Budgets, policy: str, sizes: Mapping[str, ComponentSize],
             steps: Sequence[StepDemand], host_compute: frozenset[str],
             policies: Sequence[str] = POLICIES, whole_on_device: frozenset[str] = frozenset()) -> MemoryPlanError:
    """The error when nothing fits: the tightest plan's shortfall and the changes that would fit."""
    tightest = _build(budgets, policies[-1] if policy == "auto" else policy, sizes, steps, host_compute,
                      asked=policy)
    shortfall = "; ".join(_shortfalls(tightest, budgets))
    fits = _fixes(budgets, policy, sizes, steps, host_compute, policies, whole_on_device)
    advice = (f"the cheapest change that fits: {fits[0]}" + (
        f" (also: {'; '.join(fits[1:])})" if len(fits) > 1 else "")) if fits else (
        "no change of policy, budget or fp8 storage fits: reduce the frames or resolution")
    return MemoryPlanError(f"memory policy {policy!r} under {_budgets(budgets)}: {shortfall}; "
                           f"{advice}.", fits)


def _shortfalls(found: MemoryPlan, budgets: Budgets) -> list[str]:
    out = []
    for p in found.peaks:
        if budgets.device_bytes is not None and p.device_bytes > budgets.device_bytes:
            out.append(f"step {p.step!r} needs {_gib(p.device_bytes)} of device memory "
                       f"({found.policy}), the budget is {_gib(budgets.device_bytes)}")
        if p.host_bytes > budgets.host_bytes:
            out.append(f"step {p.step!r} needs {_gib(p.host_bytes)} of host memory "
                       f"({found.policy}), the budget is {_gib(budgets.host_bytes)}")
    return out


def _fixes(budgets: Budgets, policy: str, sizes: Mapping[str, ComponentSize],
           steps: Sequence[StepDemand], host_compute: frozenset[str],
           policies: Sequence[str] = POLICIES, whole_on_device: frozenset[str] = frozenset()) -> list[str]:
    """Changes that would fit, cheapest first: a slower policy (same numbers), more host memory,
    more device memory, then those that change the numbers: a component computing on the CPU,
    fp8 storage."""
    def fits(b: Budgets, p: str, s: Mapping[str, ComponentSize] = sizes) -> bool:
        return _first_fit(b, p, s, steps, host_compute, policies) is not None

    out = [f"policy {p!r}" for p in policies
           if policy != "auto" and p != policy and fits(budgets, p)]
    host = _least(lambda n: fits(attrs.evolve(budgets, host_bytes=n), policy))
    if host is not None:
        out.append(f"a host budget of {_gib(host)}")
    if budgets.device_bytes is not None:
        device = _least(lambda n: fits(attrs.evolve(budgets, device_bytes=n), policy))
        if device is not None:
            out.append(f"a device budget of {_gib(device)}")
    if budgets.device_bytes is not None:
        out += [f"{n!r} computing on the CPU" for n, s in sizes.items()
                if n not in host_compute and not s.block_bytes and n not in whole_on_device
                and _first_fit(budgets, policy, sizes, steps, host_compute | {n}, policies) is not None]
    fp8 = {n: s.as_fp8() for n, s in sizes.items()}
    with_fp8 = _first_fit(budgets, policy, fp8, steps, host_compute, policies) if fp8 != dict(sizes) else None
    if with_fp8 is not None:  # whole, or its fp8 blocks streamed (memory.fp8_placed)
        out.append("fp8 storage of the DiT" + (" (its blocks streamed in fp8)" if streams_blocks(with_fp8) else ""))
    return out


def streams_blocks(found: MemoryPlan) -> bool:
    """Whether the plan keeps some block of a DiT off the device while it runs."""
    return any(tier != "device" for p in found.placements for tier in p.blocks)


def _least(fits: Callable[[int], bool], ceiling: int = 1 << 50) -> int | None:
    """The smallest byte count (to 1/64 GiB) for which ``fits`` holds, if any below ``ceiling``."""
    if not fits(ceiling):
        return None
    low, high = 0, ceiling
    while high - low > GIB // 64:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _check_inputs(sizes: Sequence[ComponentSize], steps: Sequence[StepDemand]) -> None:
    """Every step names known components (a wiring mistake, not a user's)."""
    names = {s.name for s in sizes}
    unknown = sorted({c for s in steps for c in s.components} - names)
    if unknown:
        raise ValueError(f"steps name components without sizes: {unknown}")


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _budgets(b: Budgets) -> str:
    device = "CPU only" if b.device_bytes is None else f"device {_gib(b.device_bytes)}"
    return f"{device}, host {_gib(b.host_bytes)}"


def _describe(p: ComponentPlacement, cpu: bool) -> str:
    """One component's placement in words."""
    where = {"device": "in RAM" if cpu else "resident on the device",
             "host": "kept in host memory, copied in for its step",
             "disk": "read from its file for its step"}[p.home]
    if p.on_host:
        where += " (computes on the CPU)"
    if not p.blocks or p.resident_blocks == len(p.blocks):
        return where + (f", all {len(p.blocks)} blocks resident while it runs" if p.blocks else "")
    host, disk = p.blocks.count("host"), p.blocks.count("disk")
    moved = ", ".join(part for part in (
        f"{host} copied in block by block from host memory" if host else "",
        f"{disk} streamed from disk" if disk else "") if part)
    return f"{where}; blocks: {p.resident_blocks} resident, {moved}"
