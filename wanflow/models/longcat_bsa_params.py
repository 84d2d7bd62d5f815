"""The settings of LongCat-Video's block-sparse attention (``models.longcat_bsa``), torch-free.

The DiT config's ``bsa_params`` say how BSA picks what each query chunk attends; planning checks
them against a refinement's token grids before any model loads, which is why they live apart from
the attention itself (which imports torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from wanflow.errors import ModelLoadError

#: (T, H, W) of a token grid, or (t, h, w) of a chunk, in latent tokens.
Grid = tuple[int, int, int]

#: What the authors' ``flash_attn_bsa_3d`` takes for a key that a config's ``bsa_params`` leaves
#: out: its own signature defaults, not the released config's values (the class defaults).
CALL_DEFAULTS: dict[str, object] = {
    "sparsity": 0.875, "cdf_threshold": None, "chunk_3d_shape_q": (4, 4, 8), "chunk_3d_shape_k": (4, 4, 8),
}


def _as_shape(value: object) -> object:
    """A config's list as a tuple; anything else is kept for `BsaParams.problems` to name."""
    return tuple(value) if isinstance(value, list | tuple) else value


@attrs.frozen
class BsaParams:
    """How BSA chooses what each query chunk attends; the defaults are the released DiT config's
    ``bsa_params``."""

    sparsity: float | None = 0.9375  # topk keeps int((1 - s) · Nk) key chunks: 1/16 in the release
    cdf_threshold: float | None = None  # cdf keeps the best chunks holding this softmax mass (unset in the release)
    chunk_q: Grid = attrs.field(default=(4, 4, 4), converter=_as_shape)  # (t, h, w) tokens per query chunk
    chunk_k: Grid = attrs.field(default=(4, 4, 4), converter=_as_shape)  # (t, h, w) tokens per key chunk

    @classmethod
    def from_config(cls, config: Mapping[str, object], where: str = "bsa_params") -> BsaParams:
        """Read the authors' ``bsa_params`` dict (``sparsity``, ``cdf_threshold``,
        ``chunk_3d_shape_q``, ``chunk_3d_shape_k``); a missing key takes the authors' call
        default, an unknown key or a bad value is refused (``where`` names the dict in messages)."""
        unknown = sorted(set(config) - set(CALL_DEFAULTS))
        if unknown:
            raise ModelLoadError(f"{where}: unknown keys {unknown}; the known keys are {sorted(CALL_DEFAULTS)}.")
        merged = CALL_DEFAULTS | dict(config)
        params = cls(sparsity=merged["sparsity"], cdf_threshold=merged["cdf_threshold"],
                     chunk_q=merged["chunk_3d_shape_q"], chunk_k=merged["chunk_3d_shape_k"])
        found = params.setting_problems()
        if found:
            raise ModelLoadError(f"{where}: " + "; ".join(found))
        return params

    def setting_problems(self) -> list[str]:
        """Why these settings cannot select chunks on any grid; empty when they can."""
        found = []
        if self.sparsity is None and self.cdf_threshold is None:
            found.append("neither sparsity nor cdf_threshold is set: one of them picks the key chunks")
        if self.sparsity is not None and not (_is_number(self.sparsity) and 0 <= self.sparsity < 1):
            found.append(f"sparsity = {self.sparsity!r}: must be in [0, 1) (the share of key chunks skipped)")
        if self.cdf_threshold is not None and not (_is_number(self.cdf_threshold) and 0 < self.cdf_threshold <= 1):
            found.append(f"cdf_threshold = {self.cdf_threshold!r}: must be in (0, 1] (a share of the softmax mass)")
        found += _shape_problems("query chunk", self.chunk_q) + _shape_problems("key chunk", self.chunk_k)
        return found

    def problems(self, grid_q: Grid, grid_k: Grid) -> list[str]:
        """Why queries on ``grid_q`` cannot attend keys on ``grid_k`` (each (T, H, W) in tokens);
        empty when they can."""
        found = self.setting_problems()
        found += _shape_problems("query grid", grid_q) + _shape_problems("key grid", grid_k)
        if found:
            return found
        found += _fit_problems("query", grid_q, self.chunk_q) + _fit_problems("key", grid_k, self.chunk_k)
        if not found and self.cdf_threshold is None and self.topk_count(chunk_count(grid_k, self.chunk_k)) == 0:
            found.append(f"sparsity {self.sparsity} keeps int((1 - {self.sparsity}) * "
                         f"{chunk_count(grid_k, self.chunk_k)}) = 0 key chunks of the key grid {tuple(grid_k)}: "
                         "lower the sparsity or use more key chunks")
        return found

    def topk_count(self, key_chunks: int) -> int:
        """Key chunks the sparsity keeps per query chunk (the authors' int((1 - s) · Nk))."""
        return int((1 - self.sparsity) * key_chunks)


#: How block-sparse attention is computed (``models.longcat_bsa``): gathering the selected chunks
#: for SDPA, or FlexAttention's block-sparse kernel (torch 2.5 and later).
IMPLEMENTATIONS = ("gather", "flex")
#: ``[runtime].sparse_attention``'s values: an implementation, or "auto" (flex on CUDA).
SETTINGS = ("auto", *IMPLEMENTATIONS)
#: The first torch release with ``torch.nn.attention.flex_attention``.
FLEX_TORCH = (2, 5)


@attrs.frozen
class SparseAttention:
    """Block-sparse attention as a run asks for it: the DiT config's settings and the implementation
    that computes them (the refinement's denoise passes this to the DiT)."""

    params: BsaParams
    implementation: str = "gather"


def torch_has_flex(version: str | None = None) -> bool:
    """Whether the installed torch (or the ``version`` given) has FlexAttention, read from the
    package's metadata without importing torch."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("torch")
        except PackageNotFoundError:
            return False
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= FLEX_TORCH
    except (IndexError, ValueError):
        return False


def implementation_for(setting: str, device: str, flex: bool | None = None) -> str:
    """The implementation ``[runtime].sparse_attention`` means on ``device`` ("cpu", "cuda",
    "cuda:1"): "auto" is flex on CUDA where torch has it (``flex``; None: ask the installed
    torch), else gather; a named one is itself."""
    if setting != "auto":
        return setting
    if not device.startswith("cuda"):
        return "gather"
    return "flex" if (torch_has_flex() if flex is None else flex) else "gather"


#: Tile sizes FlexAttention's GPU kernel may use along a block, largest first; 16 is the least
#: Triton's dot product takes.
GPU_TILES = (128, 64, 32, 16)


def gpu_tile(tokens: int, widest: int) -> int | None:
    """The widest GPU tile (at most ``widest``) dividing a chunk of ``tokens``; None if none does."""
    return next((t for t in GPU_TILES if t <= widest and tokens % t == 0), None)


def gpu_problems(params: BsaParams) -> list[str]:
    """Why FlexAttention's GPU kernel cannot take these chunks as its blocks (it tiles each block,
    so a chunk's tokens must be a multiple of a tile); empty when it can."""
    tokens = math.prod(params.chunk_q), math.prod(params.chunk_k)
    if all(gpu_tile(n, 16) for n in tokens):
        return []
    return [f"flex block-sparse attention on CUDA needs chunks of a multiple of 16 tokens (the GPU kernel's "
            f"smallest tile); the query chunk {tuple(params.chunk_q)} holds {tokens[0]} and the key chunk "
            f"{tuple(params.chunk_k)} {tokens[1]}"]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_problems(what: str, shape: object) -> list[str]:
    ok = (isinstance(shape, tuple | list) and len(shape) == 3
          and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape))
    return [] if ok else [f"{what} {shape!r}: must be three positive integers (t, h, w)"]


def _fit_problems(what: str, grid: Grid, chunk: Grid) -> list[str]:
    bad = [axis for axis, n, c in zip("THW", grid, chunk, strict=True) if n % c]
    if not bad:
        return []
    return [(f"the {what} grid (T, H, W) = {tuple(grid)} is not a multiple of the {what} chunk "
             f"{tuple(chunk)} along {', '.join(bad)}")]


def chunk_count(grid: Grid, chunk: Grid) -> int:
    """Chunks of shape ``chunk`` that tile ``grid``."""
    return math.prod(n // c for n, c in zip(grid, chunk, strict=True))
