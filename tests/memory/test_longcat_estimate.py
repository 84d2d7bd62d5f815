"""LongCat-Video's denoise forward as the planner sizes it, against the live tensor bytes of tiny
models' forwards as the denoise step runs them (the conditioning frames cached first), within
20 % like every forward estimate; its DiT's weights as the planner reads them off the headers;
and the planner never streaming a DiT planned whole."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.memory.longcat_estimate import cond_latent_frames, longcat_forward_bytes
from wanflow.memory.planner import Budgets, MemoryPlanError, StepDemand, plan
from wanflow.memory.sizes import ComponentSize, read_headers
from wanflow.models.longcat import LongCatDiT, rope_table
from wanflow.models.longcat_config import LongCatConfig, keeps_fp32, swiglu_width
from wanflow.steps.longcat_memory import dit_size

from ._ledger import LiveBytes, weight_bytes

#: (width, blocks, latent frames, conditioning latent frames, latent height, width); heads of 128,
#: the release's width. Measured in fp32, where a Linear's output is its own tensor as on a GPU.
CASES = {"text-to-video": (256, 2, 9, 0, 32, 32), "narrow": (128, 2, 5, 0, 32, 32),
         "continuation": (256, 2, 9, 4, 32, 32), "three blocks, 2 cached": (256, 3, 9, 2, 32, 32),
         "wide, oblong": (384, 2, 7, 2, 24, 40), "one cached frame": (256, 4, 11, 1, 32, 32),
         "mostly cached": (256, 2, 9, 7, 32, 32)}
#: Continuations in bf16, where rotating the cached and new keys in fp32 is the peak. (A bf16 Linear
#: on the CPU computes in fp32 blocks into its output, so a bf16 feed-forward holds less than on a
#: GPU: the feed-forward's cases are measured in fp32.)
BF16_CASES = {"bf16 continuation": (256, 2, 9, 4, 32, 32), "bf16, three blocks": (256, 3, 9, 2, 32, 32),
              "bf16 wide, oblong": (384, 2, 7, 2, 24, 40), "bf16 mostly cached": (256, 2, 9, 7, 32, 32)}


def tiny(width: int, depth: int, dtype: torch.dtype = torch.float32) -> LongCatDiT:
    """A tiny DiT in ``dtype``, its fp32 islands in fp32 (as the loader leaves them)."""
    config = LongCatConfig(hidden_size=width, depth=depth, num_heads=width // 128, ffn_dim=swiglu_width(width),
                           caption_channels=32, adaln_tembed_dim=24, frequency_embedding_size=16)
    model = LongCatDiT(config).eval()
    for name, p in model.named_parameters():
        if not keeps_fp32(name):
            p.data = p.data.to(dtype)
    return model


@pytest.mark.parametrize("width, depth, frames, cond, height, latent_width, dtype",
                         [(*c, torch.float32) for c in CASES.values()] +
                         [(*c, torch.bfloat16) for c in BF16_CASES.values()], ids=[*CASES, *BF16_CASES])
def test_a_denoise_forward_with_its_cached_conditioning(width, depth, frames, cond, height, latent_width, dtype):
    model = tiny(width, depth, dtype)
    x = torch.randn(1, 16, frames, height, latent_width, generator=torch.Generator().manual_seed(0))
    prompt = torch.randn(1, 512, 32)
    rope_table.cache_clear()  # each run makes (and keeps) its RoPE tables, whatever ran before
    with torch.no_grad(), LiveBytes(model) as ledger:
        cache = model.cache_conditioning(x[:, :, :cond]) if cond else None
        model(x[:, :, cond:], torch.full((1,), 500.0), prompt, cache=cache)
    predicted = longcat_forward_bytes(model.cfg, (frames, height, latent_width), dtype.itemsize, cond)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(model), rel=0.2)


def test_the_released_continuations_conditioning_frames():
    assert cond_latent_frames(13) == 4 and cond_latent_frames(17) == 5 and cond_latent_frames(1) == 1


def test_the_dit_is_sized_from_its_headers_with_its_fp32_islands(tmp_path):
    """Its bf16 bytes once loaded: the modulations, time embedding and final layer stay fp32."""
    model = tiny(128, 2)
    path = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    size = dit_size(read_headers([path]), 2)
    loaded = sum(p.numel() * (4 if keeps_fp32(n) else 2) for n, p in model.state_dict().items())
    assert size.weight_bytes == loaded and len(size.block_bytes) == 2  # per block, for the streaming policies
    assert dit_size(read_headers([path]), 2, whole=True).block_bytes == ()  # as one piece (fp8, compiled)
    assert loaded < sum(p.numel() * 4 for p in model.state_dict().values())


def test_a_dit_planned_whole_is_never_streamed_and_the_fixes_name_only_its_policies():
    gib = 1024**3
    sizes = [ComponentSize("dit", 10 * gib), ComponentSize("vae", gib)]
    steps = [StepDemand("denoise", ("dit",), 2 * gib), StepDemand("decode", ("vae",), gib)]
    found = plan(Budgets(20 * gib, 64 * gib), "auto", sizes, steps, policies=("none", "offload"))
    assert found.policy == "none"
    found = plan(Budgets(12 * gib, 64 * gib), "auto", sizes, steps, policies=("none", "offload"))
    assert found.policy == "offload" and found.placement("dit").blocks == ()
    with pytest.raises(MemoryPlanError) as refused:
        plan(Budgets(8 * gib, 64 * gib), "none", sizes, steps, policies=("none", "offload"),
             whole_on_device=frozenset({"dit"}))
    assert refused.value.fixes == ["a device budget of 13.00 GiB"]  # no slower policy, no DiT on the CPU
    with pytest.raises(MemoryPlanError) as refused:
        plan(Budgets(12 * gib, 64 * gib), "none", sizes, steps, policies=("none", "offload"))
    assert refused.value.fixes == ["policy 'offload'", "a device budget of 13.00 GiB", "'dit' computing on the CPU",
                                   "'vae' computing on the CPU"]  # without whole_on_device
    with pytest.raises(MemoryPlanError, match=r"memory policy 'auto' .* step 'denoise' needs 12\.00 GiB of device "
                                              r"memory \(offload\)"):
        plan(Budgets(8 * gib, 64 * gib), "auto", sizes, steps, policies=("none", "offload"))
    with pytest.raises(MemoryPlanError) as refused:  # "disk" would fit: its homes wait on disk, not in RAM
        plan(Budgets(12 * gib, 5 * gib), "auto", sizes, steps, policies=("none", "offload"))
    assert refused.value.fixes == ["a host budget of 11.00 GiB", "a device budget of 13.00 GiB", "'vae' computing on the CPU"]
    with pytest.raises(ValueError, match="policy 'disk' is not among"):
        plan(Budgets(8 * gib, 64 * gib), "disk", sizes, steps, policies=("none", "offload"))


def _released_headers() -> dict:
    """The released DiT's tensor shapes (bf16), built on the meta device: nothing is allocated."""
    from wanflow.memory.sizes import TensorInfo
    from wanflow.models.loading import build_on_meta

    config = LongCatConfig(hidden_size=4096, depth=48, num_heads=32, ffn_dim=swiglu_width(4096))
    model = build_on_meta(lambda: LongCatDiT(config))
    return config, {k: TensorInfo("BF16", tuple(v.shape)) for k, v in model.state_dict().items()}


def test_the_released_dit_streams_its_blocks_where_it_does_not_fit_whole_bf16_or_fp8():
    """A 24 GiB card at 93x480x832: the bf16 DiT (about 28 GB) cannot sit whole beside its
    activations, so ``auto`` streams its blocks from host memory; stored in fp8 (about half the
    bytes) it fits whole for text-to-video, and a 13-frame continuation, whose cached conditioning
    frames double the activations, streams some of its fp8 blocks."""
    from wanflow.memory.planner import POLICIES

    gib = 1024**3
    config, headers = _released_headers()
    whole = dit_size(headers, 2)
    assert len(whole.block_bytes) == 48 and 28e9 < whole.weight_bytes < 29e9
    grid = (24, 60, 104)  # 93 frames at 480x832
    steps = [StepDemand("denoise", ("dit",), longcat_forward_bytes(config, grid, 2))]
    found = plan(Budgets(24 * gib, 128 * gib), "auto", [whole], steps, policies=POLICIES)
    tiers = found.placement("dit").blocks
    assert found.policy == "stream" and "host" in tiers and "device" in tiers
    fp8 = dit_size(headers, 2).as_fp8()
    assert len(fp8.block_bytes) == 48 and 15e9 < fp8.weight_bytes < 16e9
    found = plan(Budgets(24 * gib, 128 * gib), "auto", [fp8], steps, policies=POLICIES)
    assert found.policy == "none" and set(found.placement("dit").blocks) == {"device"}
    continued = [StepDemand("denoise", ("dit",), longcat_forward_bytes(config, grid, 2, cond_latents=4))]
    with pytest.raises(MemoryPlanError, match="policy 'stream'"):  # whole, it does not fit
        plan(Budgets(24 * gib, 128 * gib), "offload", [fp8], continued, policies=POLICIES)
    found = plan(Budgets(24 * gib, 128 * gib), "auto", [fp8], continued, policies=POLICIES)
    tiers = found.placement("dit").blocks
    assert found.policy == "stream" and "host" in tiers and "device" in tiers


@pytest.mark.parametrize("cond", [0, 4], ids=["text-to-video", "continuation"])
def test_cfg_merge_s_batch_of_two_shares_the_cache(cond):
    """cfg_merge's forward runs [prompt; negative] as a batch of two over one cached conditioning."""
    model = tiny(256, 2)
    x = torch.randn(2, 16, 9, 32, 32, generator=torch.Generator().manual_seed(0))
    prompt = torch.randn(2, 512, 32)
    rope_table.cache_clear()
    with torch.no_grad(), LiveBytes(model) as ledger:
        cache = model.cache_conditioning(x[:1, :, :cond]) if cond else None
        model(x[:, :, cond:], torch.full((2,), 500.0), prompt, cache=cache)
    predicted = longcat_forward_bytes(model.cfg, (9, 32, 32), 4, cond, batch=2)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(model), rel=0.2)
    assert predicted > longcat_forward_bytes(model.cfg, (9, 32, 32), 4, cond) * 1.5


@pytest.mark.parametrize("grid", [(4, 16, 16), (8, 16, 32)])
def test_flex_holds_its_block_mask_where_gather_holds_gathered_keys(monkeypatch, grid):
    """With FlexAttention the attention's extra is the block lists it builds (spied on here, at the
    release's 4 x 4 x 4 chunks), which the estimate names; gathering is sized as before."""
    from torch.nn.attention.flex_attention import BlockMask

    from wanflow.memory.longcat_estimate import (
        bsa_bytes,
        bsa_flex_bytes,
        bsa_gather_bytes,
        longcat_tokens,
    )
    from wanflow.models.longcat_bsa import BsaParams, block_sparse_attention

    built = []
    real = BlockMask.from_kv_blocks.__func__

    def spy(cls, *args, **kwargs):
        built.append([a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(BlockMask, "from_kv_blocks", classmethod(spy))
    config = LongCatConfig(hidden_size=4 * 8, depth=1, num_heads=4, ffn_dim=64)
    tokens_grid = (grid[0], grid[1] // 2, grid[2] // 2)  # one token per 1 x 2 x 2 latent patch
    q, k, v = (torch.randn(1, longcat_tokens(config, grid), 4, 8) for _ in range(3))
    block_sparse_attention(q, k, v, tokens_grid, tokens_grid, BsaParams(sparsity=0.75), implementation="flex",
                           compiled=False)
    held = sum(t.untyped_storage().nbytes() for t in built[0])
    assert held == bsa_flex_bytes(config, grid) == bsa_bytes(config, grid, 2, "flex")
    assert bsa_bytes(config, grid, 2, "gather") == bsa_gather_bytes(config, grid, 2) != held
