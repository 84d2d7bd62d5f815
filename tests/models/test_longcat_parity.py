"""The LongCat-Video DiT against DiffSynth 2.1.12's ``models/longcat_video_dit.py`` (a copy of
LongCat's own model code), fp32, tiny seeded weights loaded into both.

DiffSynth is a test-only reference, installed where it is (not in CI): the one model file is
loaded by path, since importing the ``diffsynth`` package needs torchvision. What that file
imports from the rest of DiffSynth is loaded from DiffSynth's own files, except its attention
helper, whose CPU path (torch SDPA) a stand-in repeats; einops, when it is not installed, gets a
small stand-in that does the few rearrangements the file uses.

DiffSynth's cross-attention packs the whole batch into one sequence (every query sees every
sample's text), where LongCat's own code attends per sample: the comparisons run one sample.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from wanflow.models.longcat import LongCatDiT
from wanflow.models.longcat_config import LongCatConfig, swiglu_width

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

#: Tiny sizes: 4 heads of 16 (the 3-D RoPE splits 16 into 8/4/4), 2 blocks, SwiGLU 256.
TINY = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, adaln_tembed_dim=24,
            frequency_embedding_size=16, in_channels=16, out_channels=16)
#: On outputs of scale ~4 the measured max |Δ| is ≤ 1.6e-6, all of it from the patch embedding's
#: convolution kernel (wanflow picks oneDNN's on the CPU); with torch's default kernel there, the
#: text-to-video and continuation passes agree exactly.
TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- the reference


def reference_module(package: str = "_longcat_reference") -> types.ModuleType:
    """DiffSynth's ``models/longcat_video_dit.py`` as a module, or skip."""
    spec = importlib.util.find_spec("diffsynth")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("DiffSynth is not installed (a test-only reference)")
    root = Path(spec.submodule_search_locations[0])
    stand_ins = {f"{package}{suffix}": _package(f"{package}{suffix}")
                 for suffix in ("", ".models", ".core", ".core.device")}
    stand_ins[f"{package}.models.wan_video_dit"] = types.SimpleNamespace(flash_attention=_sdpa_packed)
    if importlib.util.find_spec("einops") is None:
        stand_ins["einops"] = types.SimpleNamespace(rearrange=_rearrange, repeat=_rearrange)
    with mock.patch.dict(sys.modules, stand_ins):
        _load(f"{package}.core.device.npu_compatible_device", root / "core/device/npu_compatible_device.py")
        _load(f"{package}.core.gradient", root / "core/gradient/gradient_checkpoint.py")
        return _load(f"{package}.models.longcat_video_dit", root / "models/longcat_video_dit.py")


def _package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _sdpa_packed(q, k, v, num_heads, compatibility_mode=False):
    """DiffSynth's attention helper on a machine without flash-attn: SDPA over (b, s, n·d)."""
    split = [t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v)]  # (b, n, s, d)
    return F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)


def _groups(side: str, ellipsis: int) -> list[list[str]]:
    """'B (H D) ...' -> [['B'], ['H', 'D'], ['…0'], ['…1']] for an ellipsis of 2 axes."""
    groups = []
    for token in re.findall(r"\.\.\.|\([^)]*\)|\S+", side):
        if token == "...":
            groups += [[f"…{i}"] for i in range(ellipsis)]
        else:
            groups.append(token[1:-1].split() if token.startswith("(") else [token])
    return groups


def _rearrange(x: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    """einops' rearrange and repeat, for the patterns the reference uses: groups, '...', '1' and
    new (repeated) axes on the right."""
    left, right = pattern.split("->")
    ellipsis = x.ndim - (len(_groups(left, 0)) if "..." in left else x.ndim)
    lhs, rhs = _groups(left, ellipsis), _groups(right, ellipsis)
    known = dict(sizes)
    for group, size in zip(lhs, x.shape):
        unknown = [n for n in group if n not in known]
        if unknown:
            known[unknown[0]] = size // math.prod(known[n] for n in group if n in known)
    names = [n for group in lhs for n in group]
    x = x.reshape([known[n] for n in names])
    order = [n for group in rhs for n in group]
    x = x.permute([names.index(n) for n in order if n in names])
    for position, name in enumerate(order):
        if name not in names:  # a new axis: '1', or one that repeat() broadcasts
            x = x.unsqueeze(position)
            x = x.expand(*x.shape[:position], 1 if name == "1" else known[name], *x.shape[position + 1:])
    return x.reshape([math.prod(1 if n == "1" else known[n] for n in group) for group in rhs])


# ----------------------------------------------------------------------------- the two models


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of every tensor (norm weights near 1), so no path is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        value = torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1]))
        state[name] = 1.0 + value if "norm" in name and name.endswith("weight") else value
    return state


def pair(zero_pad: bool = True, seed: int = 0):
    """(ours, the reference) with the same seeded weights."""
    ref_module = reference_module()
    ours = LongCatDiT(LongCatConfig(ffn_dim=swiglu_width(64), text_tokens_zero_pad=zero_pad, **TINY)).eval()
    reference = ref_module.LongCatVideoTransformer3DModel(
        mlp_ratio=4, enable_flashattn2=False, text_tokens_zero_pad=zero_pad, **TINY).eval()
    state = seeded_state(ours, seed)
    ours.load_state_dict(state, strict=True)
    reference.load_state_dict(state, strict=True)  # the same key set, names and shapes
    return ours, reference


def inputs(frames: int = 5, seed: int = 1, real_tokens: int = 7):
    """Latents (1, 16, T, 4, 6), a timestep, 512 umT5 slots zero after ``real_tokens``, its mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, frames, 4, 6, generator=g)
    context = torch.randn(1, 512, 32, generator=g)
    context[:, real_tokens:] = 0
    mask = (torch.arange(512) < real_tokens).long()[None]
    return x, torch.tensor([731.25]), context, mask


# ----------------------------------------------------------------------------- parity


@torch.no_grad()
@pytest.mark.parametrize("zero_pad", [True, False])
def test_text_to_video_equals_the_reference(zero_pad):
    ours, reference = pair(zero_pad)
    x, t, context, mask = inputs()
    expected = reference(x, t.clone(), context[:, None], encoder_attention_mask=mask)
    got = ours(x, t, context, text_lens=mask.sum(1))
    assert got.shape == expected.shape == x.shape
    assert float(expected.abs().max()) > 0.5  # a non-trivial output
    assert float((got - expected).abs().max()) < TOLERANCE


@torch.no_grad()
def test_continuation_equals_the_reference_on_every_frame():
    ours, reference = pair(seed=3)
    x, t, context, mask = inputs(frames=6, seed=4)
    expected = reference(x, t.clone(), context[:, None], encoder_attention_mask=mask, num_cond_latents=2)
    got = ours(x, t, context, text_lens=mask.sum(1), cond_frames=2)
    assert float((got - expected).abs().max()) < TOLERANCE
    plain = reference(x, t.clone(), context[:, None], encoder_attention_mask=mask)  # no conditioning
    assert float((plain[:, :, 2:] - expected[:, :, 2:]).abs().max()) > 1e-2  # conditioning mattered


@torch.no_grad()
def test_per_frame_timesteps_equal_the_reference():
    ours, reference = pair(seed=5)
    x, _, context, mask = inputs(frames=4, seed=6)
    t = torch.tensor([[123.0, 250.0, 600.5, 999.0]])  # the first frame is conditioning: 0 in both
    expected = reference(x, t.clone(), context[:, None], encoder_attention_mask=mask, num_cond_latents=1)
    got = ours(x, t, context, text_lens=mask.sum(1), cond_frames=1)
    assert float((got - expected).abs().max()) < TOLERANCE


@torch.no_grad()
def test_the_kv_cache_path_equals_the_reference_full_pass():
    ours, reference = pair(seed=7)
    x, t, context, mask = inputs(frames=6, seed=8)
    expected = reference(x, t.clone(), context[:, None], encoder_attention_mask=mask, num_cond_latents=2)
    cache = ours.cache_conditioning(x[:, :, :2])
    got = ours(x[:, :, 2:], t, context, text_lens=mask.sum(1), cache=cache)
    assert float((got - expected[:, :, 2:]).abs().max()) < TOLERANCE


@torch.no_grad()
def test_the_cached_keys_and_values_equal_the_reference_cache():
    ours, reference = pair(seed=9)
    x, _, _, _ = inputs(frames=3, seed=10)
    empty = torch.zeros(1, 1, 512, 32)  # the reference's cache pass takes (unused) text
    _, expected = reference(x, torch.zeros(1, 3), empty, return_kv=True, skip_crs_attn=True)
    cache = ours.cache_conditioning(x)
    assert len(cache.kv) == len(expected) == 2
    for (k, v), (ref_k, ref_v) in zip(cache.kv, expected.values()):  # reference: (B, H, L, d)
        assert float((k - ref_k.transpose(1, 2)).abs().max()) < TOLERANCE
        assert float((v - ref_v.transpose(1, 2)).abs().max()) < TOLERANCE
