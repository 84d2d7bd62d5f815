"""Apply a DiT placement: each block resident, copied in from host memory, or read from disk.

The one place that moves DiT weights at run time; model code never does. Forward hooks do it:

- a block's pre-hook makes its weights present (waiting for the prefetch of them if one is under
  way, else fetching them now) and starts fetching the next offloaded block; its post-hook
  drops them again: each parameter becomes a placeholder on the meta device, which holds no
  memory and fails loudly if anything computes with it;
- leaf modules of an offloaded block fault their block in when called from outside the block's
  forward (``prepare_context`` projects every block's keys and values that way); at most one
  such block is present at a time, and the model's post-hook drops whatever is left.

Tiers of an offloaded block:

- ``host``: the weights live in host memory (pinned when the compute device is CUDA). On CUDA the
  next block is copied on a side stream while the current one computes, and the compute stream
  waits on an event only when it needs that block; each copied tensor is marked as used by the
  compute stream (``record_stream``) so its memory is not reused before the block has run. On
  the CPU the host tensors are the weights themselves: nothing is copied.
- ``disk``: the parameters are views of the privately memory-mapped checkpoint
  (`wanflow.models.checkpoint_files`). A reader thread asks the kernel to read the next block
  ahead (``madvise(WILLNEED)``); on CUDA it also copies the block into pinned staging memory and
  on to the device on the side stream. After use, the mapped pages are dropped
  (``madvise(DONTNEED)``), so resident memory stays about one block whatever the model's size.
  On the CPU each weight is copied out of the mapping as it is read (used in place, its data
  would sit at the file's alignment, on which CPU matmul kernels can round differently): the
  block computing and the one read ahead are both copies, two blocks' weights at once. A
  weight the file holds in another form than the model's (``convert``: bf16 to be stored in fp8,
  scaled fp8 to be computed in bf16) is converted as it is read, on the reader thread when read
  ahead, by the same function the resident load applies.

Placement never changes the numbers: the same bytes reach the same kernels in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError
from wanflow.memory.mapped import MADV_DONTNEED, MADV_WILLNEED, advise

BlockTier = Literal["device", "host", "disk"]
TIERS = ("device", "host", "disk")


class _Block:
    """One block's parameters: where each lives, and what is installed in the module now."""

    def __init__(self, index: int, module: nn.Module, tier: str, prefix: str,
                 select: Callable[[str], str | None] | None = None):
        self.index, self.module, self.tier, self.prefix = index, module, tier, prefix
        named = [(owner, name, f"{prefix}{path}{'.' if path else ''}{name}")
                 for path, owner in module.named_modules() for name in owner._parameters
                 if owner._parameters[name] is not None]
        chosen = [(owner, name, full if select is None else select(full)) for owner, name, full in named]
        self.slots = [slot for slot in chosen if slot[2] is not None]
        self.source: dict[str, Tensor] = {}  # full name -> host copy or mapped view
        self.present = False

    def install(self, tensors: Mapping[str, Tensor]) -> None:
        for owner, name, full in self.slots:
            owner._parameters[name] = nn.Parameter(tensors[full], requires_grad=False)
        self.present = True

    def drop(self) -> None:
        for owner, name, _ in self.slots:
            old = owner._parameters[name]
            owner._parameters[name] = nn.Parameter(
                torch.empty(old.shape, dtype=old.dtype, device="meta"), requires_grad=False)
        self.present = False

    def targets(self) -> dict[str, tuple[torch.Size, torch.dtype]]:
        return {full: (owner._parameters[name].shape, owner._parameters[name].dtype)
                for owner, name, full in self.slots}


class BlockPlacement:
    """Hooks that keep a model's blocks in their tiers; ``remove()`` makes it a plain module again.

    Args:
        model: a module whose ``blocks`` (a ModuleList) run in order inside its forward.
        tiers: one of "device", "host", "disk" per block.
        device: the compute device; the rest of the model's weights are moved there.
        checkpoint: full parameter name -> tensor viewing the mapped checkpoint, needed by
            "disk" blocks; it must hold the values the model was loaded with (no merged LoRA).
        convert: full parameter name -> the function that turns its mapped view into the
            parameter (on the CPU, in the parameter's dtype), for disk-tier weights whose file
            form is not the stored one (`wanflow.memory.fp8_placed`'s fp8 conversions).
        select: a block parameter's name -> the checkpoint name it is streamed under, or None to
            keep it resident (a trained LoRA factor); None streams every block parameter by its name.
    """

    def __init__(self, model: nn.Module, tiers: Sequence[str], device: torch.device | str,
                 checkpoint: Mapping[str, Tensor] | None = None,
                 convert: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
                 select: Callable[[str], str | None] | None = None):
        self.model, self.device = model, torch.device(device)
        self.convert = dict(convert or {})
        blocks = list(model.blocks)
        _check_tiers(tiers, len(blocks), checkpoint)
        self.cuda = self.device.type == "cuda"
        self.blocks = [_Block(i, b, t, f"blocks.{i}.", select) for i, (b, t) in enumerate(zip(blocks, tiers))]
        self.order = [b for b in self.blocks if b.tier != "device"]
        self.side = torch.cuda.Stream(self.device) if self.cuda else None
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="wanflow-read-ahead") \
            if any(b.tier == "disk" for b in self.order) else None
        self.pending: dict[int, Future] = {}
        self.hooks: list = []
        self._settle(checkpoint or {})
        self._register()

    # -------------------------------------------------------------- setting up and tearing down

    def _settle(self, checkpoint: Mapping[str, Tensor]) -> None:
        """Resident weights onto the device, offloaded ones into their tier, placeholders in place.

        A resident parameter already on the device is left as it is: a trained one keeps its
        identity (an optimizer may hold it) and its ``requires_grad``."""
        offloaded = {id(p) for b in self.order for owner, name, _ in b.slots
                     for p in [owner._parameters[name]]}
        for module in self.model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and id(p) not in offloaded and not p.is_meta and not _on(p, self.device):
                    module._parameters[name] = nn.Parameter(p.to(self.device), requires_grad=p.requires_grad)
            for name, buf in list(module._buffers.items()):
                if buf is not None and not buf.is_meta:
                    module._buffers[name] = buf.to(self.device)
        for block in self.order:
            for owner, name, full in block.slots:
                p = owner._parameters[name]
                if block.tier == "host":
                    block.source[full] = self._host_copy(p)
                else:
                    block.source[full] = _view(checkpoint, full, p)
            block.drop()

    def _host_copy(self, p: Tensor) -> Tensor:
        if p.is_meta:
            raise ModelLoadError(f"a host-tier block has no weights to keep ({tuple(p.shape)} on meta); "
                                 "load them first or place the block on disk.")
        host = p.detach().to("cpu")
        return host.pin_memory() if self.cuda else host

    def _register(self) -> None:
        self.hooks.append(self.model.register_forward_pre_hook(lambda m, a: self._begin()))
        self.hooks.append(self.model.register_forward_hook(lambda m, a, o: self._end()))
        for block in self.order:
            self.hooks.append(block.module.register_forward_pre_hook(
                lambda m, a, b=block: self._acquire(b, faulted=False)))
            self.hooks.append(block.module.register_forward_hook(lambda m, a, o, b=block: self._release(b)))
            for module in block.module.modules():
                if module is not block.module and module._parameters:
                    self.hooks.append(module.register_forward_pre_hook(
                        lambda m, a, b=block: None if b.present else self._acquire(b, faulted=True)))

    def remove(self) -> None:
        """Remove the hooks; offloaded blocks get their weights back as host tensors (disk ones copied)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self._end()
        for block in self.order:
            block.install({full: self._restored(block, full) for _, _, full in block.slots})
            if block.tier == "disk":
                advise(list(block.source.values()), MADV_DONTNEED)
        if self.reader is not None:
            self.reader.shutdown()

    def _restored(self, block: _Block, full: str) -> Tensor:
        _, dtype = block.targets()[full]
        source = block.source[full]
        if block.tier == "disk" and full in self.convert:
            return self.convert[full](source)
        return source.to(dtype) if block.tier == "host" else source.to(dtype, copy=True)

    # -------------------------------------------------------------- the hooks

    def _begin(self) -> None:
        """Before a forward: nothing offloaded is present yet; start fetching the first block."""
        self._end()
        if self.order:
            self._prefetch(self.order[0])

    def _end(self) -> None:
        """After a forward (or before the next): drop what is still present, finish pending reads."""
        for index in list(self.pending):
            self.pending.pop(index).result()
        for block in self.order:
            if block.present:
                self._release(block)

    def _acquire(self, block: _Block, *, faulted: bool) -> None:
        if not block.present:
            future = self.pending.pop(block.index, None)
            tensors, arrived = future.result() if future is not None else self._fetch(
                block, block.targets())
            if arrived is not None:  # the compute stream waits for the copy, and owns its memory
                current = torch.cuda.current_stream(self.device)
                current.wait_event(arrived)
                for t in tensors.values():
                    t.record_stream(current)
            block.install(tensors)
        for other in self.order:  # at most one block present besides the one running
            if other is not block and other.present:
                self._release(other)
        following = self._next(block)
        if following is not None and not faulted:
            self._prefetch(following)

    def _release(self, block: _Block) -> None:
        block.drop()
        if block.tier == "disk" and not self.cuda:
            advise(list(block.source.values()), MADV_DONTNEED)

    def _next(self, block: _Block) -> _Block | None:
        position = self.order.index(block) + 1
        return self.order[position] if position < len(self.order) else None

    # -------------------------------------------------------------- fetching

    def _prefetch(self, block: _Block) -> None:
        """Start bringing ``block`` in: a reader thread for disk, the side stream for host on CUDA."""
        if block.present or block.index in self.pending:
            return
        if block.tier == "disk":
            self.pending[block.index] = self.reader.submit(self._fetch, block, block.targets(), True)
        elif self.cuda:
            done: Future = Future()
            done.set_result(self._fetch(block, block.targets()))
            self.pending[block.index] = done

    def _fetch(self, block: _Block, targets: Mapping[str, tuple], ahead: bool = False
               ) -> tuple[dict[str, Tensor], torch.cuda.Event | None]:
        """The block's tensors on the compute device, and (CUDA) the event of their copy.

        On CUDA the copies are queued on the side stream and the call returns at once (a disk
        block is first staged in pinned memory, by the reader thread when read ahead).
        """
        if block.tier == "disk" and ahead:
            advise(list(block.source.values()), MADV_WILLNEED)
        if not self.cuda:
            return {full: _on_cpu(block, full, dtype, self.convert.get(full))
                    for full, (_, dtype) in targets.items()}, None
        out = {}
        with torch.cuda.stream(self.side):
            for full, (_, dtype) in targets.items():
                source = block.source[full]
                if block.tier == "disk":
                    convert = self.convert.get(full)
                    staged = torch.empty(source.shape, dtype=dtype if convert else source.dtype, pin_memory=True)
                    staged.copy_(convert(source) if convert else source)
                    advise([source], MADV_DONTNEED)
                    source = staged
                out[full] = source.to(self.device, dtype, non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record(self.side)
        return out, arrived


def _on(t: Tensor, device: torch.device) -> bool:
    """Whether ``t`` is on ``device`` (an unindexed CUDA device: the current one)."""
    if t.device.type != device.type:
        return False
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    return t.device.index == index


def _on_cpu(block: _Block, full: str, dtype: torch.dtype,
            convert: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """A CPU weight from its source: the host tensor itself when the dtype matches; a disk-tier
    weight always a copy out of its mapped view (or ``convert``'s). A view's data sit where the
    file puts them (safetensors aligns to 8 bytes), and CPU matmul kernels can round differently
    on such data than on the aligned memory a resident load allocates, seen on LongCat's
    conditioning pass: the copy keeps a streamed run bit-equal to the resident one."""
    source = block.source[full]
    if block.tier == "disk" and convert is not None:
        out = convert(source)
    elif block.tier == "disk":
        out = source.to(dtype, copy=True)
    elif source.dtype == dtype:
        return source
    else:
        out = source.to(dtype)
    if block.tier == "disk":
        advise([source], MADV_DONTNEED)
    return out


def _view(checkpoint: Mapping[str, Tensor], full: str, p: Tensor) -> Tensor:
    if full not in checkpoint:
        raise ModelLoadError(f"a disk-tier block needs {full!r}, which the checkpoint does not hold; "
                             "pass the views of the file the model was loaded from.")
    view = checkpoint[full]
    if tuple(view.shape) != tuple(p.shape):
        raise ModelLoadError(f"{full}: checkpoint shape {tuple(view.shape)}, model {tuple(p.shape)}.")
    return view


def _check_tiers(tiers: Sequence[str], count: int, checkpoint: Mapping | None) -> None:
    if len(tiers) != count or any(t not in TIERS for t in tiers):
        raise ValueError(f"expected {count} tiers from {TIERS}, got {list(tiers)}")
    if "disk" in tiers and checkpoint is None:
        raise ValueError("disk-tier blocks need the checkpoint's mapped views (checkpoint=...)")


def apply_placement(model: nn.Module, tiers: Sequence[str], device: torch.device | str = "cpu",
                    checkpoint: Mapping[str, Tensor] | None = None,
                    convert: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> BlockPlacement:
    """Put ``model``'s blocks in ``tiers`` and keep them there; the handle's ``remove()`` undoes it."""
    return BlockPlacement(model, tiers, device, checkpoint, convert)

