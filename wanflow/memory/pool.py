"""Loaded models kept in-process, so the jobs of a sweep share them, within the recipe's budget.

A model is pooled under everything that makes it what it is: its files (path, size, mtime,
inode), dtype, device and the loader's own choices; a request that differs in any of them loads
anew. What stays resident follows the `Residency` a step passes (from the memory plan):

- under every policy but ``none``, one large model (a DiT or an encoder) at a time: a DiT evicts
  the encoders and the other A14B expert, an encoder the DiT;
- under every policy, before a load the least recently used models leave until the new one
  (its tensors' sizes at the target dtype, read off the file headers) fits in the budget, and
  after it, until the measured models (their parameters and buffers) fit.

Without a `Residency` the pool keeps its unbounded rule: a DiT releases the other DiTs and the
encoders, nothing else leaves.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import sysconfig
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.errors import ModelInputError

log = structlog.get_logger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

#: Kinds of model of which policies other than ``none`` keep one resident at a time.
LARGE_KINDS = ("dit", "text_encoder", "image_encoder")


@attrs.frozen
class Residency:
    """What the model pool may keep loaded at once: the recipe's policy and its budget in bytes.

    Built at planning from the memory plan (its policy and the budget of the device models load
    on) and handed to the model steps as a field that is not part of their key.
    """

    policy: str  # [memory].policy
    budget_bytes: int  # [memory].limit_gb, else the device's memory

    @property
    def one_large_model(self) -> bool:
        """Every policy but ``none`` keeps one large model (a DiT or an encoder) at a time."""
        return self.policy != "none"


@attrs.frozen
class Pooled:
    """A loaded model, its kind (the key's first item) and the bytes of its weights."""

    kind: str
    model: Any
    nbytes: int


#: key -> model, least recently used first.
_POOL: OrderedDict[tuple, Pooled] = OrderedDict()


def weight_files(files: Sequence[Path]) -> list[Path]:
    """The tensor files among a component's files (index json, config.json and the like left out)."""
    return [Path(f) for f in files if Path(f).suffix in WEIGHT_SUFFIXES]


def clear() -> None:
    """Release every pooled model (tests, and callers that need the memory back)."""
    _POOL.clear()
    gc.collect()


def resident() -> list[tuple[str, int]]:
    """(kind, bytes) of each pooled model, least recently used first."""
    return [(entry.kind, entry.nbytes) for entry in _POOL.values()]


def resident_bytes() -> int:
    """Bytes of every pooled model's weights together."""
    return sum(entry.nbytes for entry in _POOL.values())


def dit(files: Sequence[Path], dtype: Any, device: str, attention: str,
        residency: Residency | None = None, loras: Sequence[tuple[Path, float]] = (),
        storage: str = "compute", tiers: Sequence[str] = (), compile_mode: str = "none",
        kernel: Callable[..., Any] | None = None) -> Any:
    """A WanDiT from its shard files, with ``loras`` (file, scale) applied in order.

    A patched DiT is its own pool entry, loaded from the files and patched privately: the plain
    DiT another job of a sweep uses is never mutated. ``storage = "fp8"`` keeps the block weights
    in fp8 (``"fp8-matmul"`` multiplies them in fp8 too), streamed as fp8 too when ``tiers`` (the
    memory plan) streams blocks in and out (``memory.fp8_placed``); LoRAs are then applied on the
    fly: a merge would be lost in fp8's rounding, and a streamed block is read again from its file,
    where a merged LoRA is not. ``compile_mode = "blocks"`` (``[runtime].compile``)
    compiles each block with torch.compile; ``kernel`` is a plugin's attention kernel, made
    usable under the name ``attention`` (wanflow's own kernels need none)."""
    from wanflow.memory.dit_variants import load_variant, variant_of
    from wanflow.models.dit_loader import load_dit
    from wanflow.models.fp8 import stores_in_fp8

    if kernel is not None:
        from wanflow.models.attention import use_kernel

        use_kernel(attention, kernel)
    weights = weight_files(files)
    patches = tuple((_stamp(path), float(scale)) for path, scale in loras)
    key = ("dit", _stamp(*files), str(dtype), device, attention, patches, storage, tuple(tiers), compile_mode)

    def load() -> Any:
        if tiers and compile_mode != "none" and not compiled_blocks_stream():
            raise ModelInputError(f'[runtime].compile = "{compile_mode}" with blocks streamed by the memory '
                                  'policy needs torch 2.5 or later; upgrade torch, raise the budget, or set '
                                  'compile = "none"')
        variant = variant_of(weights)  # a DiT that is more than Wan's (dit_variants.VARIANTS)
        if variant is not None:
            model = load_variant(variant, weights, dtype, device, attention, storage, tiers)
        elif tiers:
            model = _placed_dit(weights, tiers, dtype, device, attention, storage)
        else:
            model = load_dit(weights, dtype=dtype, device=device, attention_kernel=attention,
                             storage=storage)
        if loras:
            from wanflow.lora import attach, merge, read_lora

            apply = attach if stores_in_fp8(storage) or tiers else merge
            apply(model, [read_lora(path) for path, _ in loras], [scale for _, scale in loras],
                  labels=[Path(path).name for path, _ in loras])
        if compile_mode == "blocks":
            compile_blocks(model)
        return model.eval().requires_grad_(False)

    return _get(key, residency, lambda: _expected_bytes(weights, dtype), load)


def compile_blocks(model: Any) -> Any:
    """torch.compile each DiT block's forward in place, for fixed shapes (a new latent size compiles anew).

    The blocks hold nearly all of a forward's time; the embeddings and the head stay eager. Fused
    kernels may round differently in the last bits, so ``[runtime].compile`` is keyed. The forward
    alone is compiled, not the module's call: the placement's hooks of a streamed block (which
    wait for reads and swap its parameters) stay eager outside the graph, and since torch 2.5
    the parameters a hook swaps in are inputs of that graph, so a streamed block reuses it
    (``compiled_blocks_stream``)."""
    import torch

    for block in model.blocks:
        block.forward = torch.compile(block.forward, dynamic=False)
    return model


def compiled_blocks_stream() -> bool:
    """Whether compiled blocks may be streamed: torch 2.5 and later treat a module's parameters as
    graph inputs (``inline_inbuilt_nn_modules``), so a block whose parameters the placement swaps
    at every step runs the graph it compiled once; earlier ones guard on each parameter's identity
    and would compile again at every step. Read off the installed version, torch not imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("torch").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 5)


def compile_problems(device: str) -> list[str]:
    """Why torch.compile cannot run on ``device`` here; empty when it can. Looked up on disk, not
    imported, so validation stays fast."""
    spec = importlib.util.find_spec("torch")
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not any((Path(folder) / "_inductor").is_dir() for folder in folders):
        return ["this torch has no compiler (torch._inductor is missing)"]
    if device.startswith("cuda"):
        if importlib.util.find_spec("triton") is None:
            return ["torch compiles CUDA kernels with Triton, which is not installed (pip install triton)"]
        return []
    found = []
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        found.append(f"torch compiles CPU kernels with a C++ compiler, and {cxx} is not found "
                     "(install g++, or name yours in CXX)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        found.append("torch compiles CPU kernels against Python's C headers, which are not installed "
                     "(install python3-dev)")
    return found


def _placed_dit(weights: Sequence[Path], tiers: Sequence[str], dtype: Any, device: str,
                attention: str, storage: str = "compute") -> Any:
    """A DiT whose blocks sit in the memory plan's tiers; the placement's hooks live with it."""
    from wanflow.memory.streamed import load_placed_dit

    config = _config_of(weights)
    model, placement = load_placed_dit(weights, config, tiers, dtype=dtype, device=device,
                                       attention_kernel=attention, storage=storage)
    model.placement = placement  # the hooks stay registered as long as the pooled model lives
    return model


def _config_of(weights: Sequence[Path]) -> Any:
    """The DiT config as ``load_dit`` reads it: config.json beside the weights with the derivative
    parts the weights hold (Wan-Fun's ``ref_conv`` and camera adapter, VACE blocks), else read off
    the header shapes. A config without those parts would not fit the file a streamed DiT maps."""
    from wanflow.memory.sizes import dit_shapes
    from wanflow.models.dit_config import from_shapes, with_parts
    from wanflow.models.dit_loader import read_config

    beside = Path(weights[0]).parent / "config.json"
    shapes = dit_shapes(weights)
    if beside.is_file():
        return with_parts(read_config(beside, has_clip="img_emb.proj.0.weight" in shapes), shapes, str(beside))
    return from_shapes(shapes, str(weights[0]))


def text_encoder(path: Path, tokenizer_dir: Path, dtype: Any, device: str,
                 residency: Residency | None = None) -> Any:
    """The umT5 encoder and its tokenizer."""
    from wanflow.models.text_encoder import TextEncoder

    folder = Path(tokenizer_dir)
    tokenizer_files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    key = ("text_encoder", _stamp(path), str(tokenizer_dir), _stamp(*tokenizer_files), str(dtype), device)
    return _get(key, residency, lambda: _expected_bytes([path], dtype),
                lambda: TextEncoder.from_checkpoint(path, tokenizer_dir, dtype=dtype, device=device))


def image_encoder(path: Path, dtype: Any, device: str, residency: Residency | None = None) -> Any:
    """The CLIP vision tower of Wan2.1 I2V/FLF2V."""
    from wanflow.models.image_encoder import ImageEncoder

    key = ("image_encoder", _stamp(path), str(dtype), device)
    return _get(key, residency, lambda: _expected_bytes([path], dtype),
                lambda: ImageEncoder.from_checkpoint(path, dtype=dtype, device=device))


def vae(path: Path, version: str, dtype: Any, device: str, residency: Residency | None = None) -> Any:
    """A Wan VAE of the family's version (widths other than the released ones are read off the file)."""
    from wanflow.models.vae.loader import load_vae

    key = ("vae", _stamp(path), version, str(dtype), device)
    return _get(key, residency, lambda: _expected_bytes([path], dtype),
                lambda: load_vae(path, version, dtype=dtype, device=device))


def _stamp(*paths: Path) -> tuple:
    """Each file's path, size, mtime and inode: a file replaced on disk is loaded again."""
    stats = [(str(p), Path(p).stat()) for p in paths]
    return tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats)


def _get(key: tuple, residency: Residency | None, expected: Callable[[], int],
         load: Callable[[], Any]) -> Any:
    """The pooled model under ``key``, loaded (after making room) on a miss."""
    if residency is None:
        _release_unbounded(key)
    if key in _POOL:
        _POOL.move_to_end(key)
    else:
        if residency is not None:
            _make_room(residency, key[0], expected())
        model = load()
        _POOL[key] = Pooled(key[0], model, model_bytes(model))
    if residency is not None:  # measured sizes, and a later job may allow less than an earlier
        _make_room(residency, key[0], 0, keep=key)
    return _POOL[key].model


def _release_unbounded(key: tuple) -> None:
    """Without a budget: a DiT releases the other DiTs and the encoders."""
    if key[0] == "dit":
        _release([k for k, entry in _POOL.items() if entry.kind in LARGE_KINDS and k != key])


def _make_room(residency: Residency, kind: str, need: int, keep: tuple | None = None) -> None:
    """Release models, least recently used first, until ``need`` more bytes fit the budget."""
    others = [k for k in _POOL if k != keep]
    if residency.one_large_model and kind in LARGE_KINDS:
        _release([k for k in others if _POOL[k].kind in LARGE_KINDS])
        others = [k for k in others if k in _POOL]
    while others and resident_bytes() + need > residency.budget_bytes:
        _release([others.pop(0)])
    if keep is not None and resident_bytes() > residency.budget_bytes:  # it alone, once measured
        log.warning("model_over_budget", kind=kind, resident_bytes=resident_bytes(),
                    budget_bytes=residency.budget_bytes, policy=residency.policy)


def _release(keys: Sequence[tuple]) -> None:
    """Drop the pool's hold on these models and collect, so their memory is free for the next."""
    for key in keys:
        entry = _POOL.pop(key)
        log.debug("model_released", kind=entry.kind, bytes=entry.nbytes)
    if keys:
        gc.collect()


def model_bytes(model: Any) -> int:
    """Bytes of a loaded model's parameters and buffers, each storage once."""
    module = getattr(model, "model", model)  # the encoders wrap their network as .model
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*module.parameters(), *module.buffers()]}
    return sum(storages.values())


def _expected_bytes(paths: Sequence[Path], dtype: Any) -> int:
    """What the files' tensors take once loaded in ``dtype`` (floating ones cast, the rest as stored)."""
    from wanflow.models.checkpoint_files import open_state_dict

    total = 0
    for path in paths:
        for tensor in open_state_dict(path).values():
            size = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
            total += tensor.numel() * size
    return total
