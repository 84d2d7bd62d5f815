"""The memory plan of the released Wan2.2-Animate-14B and Wan2.2-S2V-14B DiTs on a 24 GiB card.

Sized from the released shapes (built on the meta device, nothing allocated) as ``wanflow plan``
sizes them from the headers (``component_size``, the DiT per block) with the denoise estimate of
their own forward: in bf16 neither fits whole beside its activations, so ``auto`` streams its
blocks from host memory, keeping as many resident as fit; with the block projections in fp8 it
fits whole at 480x832, and at the larger sizes of docs/animate.md and docs/s2v.md, where the fp8
DiT whole does not fit, its fp8 blocks stream (`memory.fp8_placed`). A bf16 run holds the DiT at
the bytes the plan counts (its own fp32 islands included).
"""

from __future__ import annotations

import attrs
import pytest

from wanflow.memory.estimates import latent_grid
from wanflow.memory.planner import Budgets, MemoryPlanError, StepDemand, plan
from wanflow.memory.sizes import TensorInfo, component_size
from wanflow.models.loading import build_on_meta
from wanflow.steps.memory_plan import denoise_bytes, dit_keeps_fp32

GIB = 1024**3
BUDGETS = Budgets(24 * GIB, 128 * GIB)


def _released(variant: str):
    """The released DiT's config and its tensors' headers in bf16."""
    if variant == "animate":
        from wanflow.models.animate import AnimateDiT
        from wanflow.models.animate_config import WAN22_ANIMATE_14B

        config, model = WAN22_ANIMATE_14B.dit, build_on_meta(lambda: AnimateDiT(WAN22_ANIMATE_14B))
    else:
        from wanflow.models.s2v import S2VDiT
        from wanflow.models.s2v_config import WAN22_S2V_14B

        config, model = WAN22_S2V_14B.dit, build_on_meta(lambda: S2VDiT(WAN22_S2V_14B))
    return config, {k: TensorInfo("BF16", tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant, weight_gb, fp8_gb", [("animate", (34.5, 35.5), (18.5, 19.2)),
                                                          ("s2v", (32.5, 33.5), (18.5, 19.2))])
def test_the_released_dit_streams_its_blocks_on_a_24_gib_card_and_fits_whole_in_fp8(variant, weight_gb, fp8_gb):
    config, headers = _released(variant)
    size = component_size("dit", headers, 2, keeps_fp32=dit_keeps_fp32, blocks=True)
    assert len(size.block_bytes) == 40 and weight_gb[0] < size.weight_bytes / 1e9 < weight_gb[1]
    grid = latent_grid(77, 480, 832, "wan2.1")
    steps = [StepDemand("denoise", ("dit",), denoise_bytes(config, headers, grid, 2, prepared_contexts=2))]
    whole = attrs.evolve(size, block_bytes=(), fp8_block_bytes=())
    with pytest.raises(MemoryPlanError) as refused:
        plan(BUDGETS, "auto", [whole], steps)
    assert "fp8 storage of the DiT" in refused.value.fixes  # offered: the variant stores its blocks in fp8
    found = plan(BUDGETS, "auto", [size], steps)
    tiers = found.placement("dit").blocks
    assert found.policy == "stream" and "host" in tiers and "device" in tiers
    assert found.peaks[0].device_bytes <= BUDGETS.device_bytes
    fp8 = whole.as_fp8()
    assert fp8_gb[0] < fp8.weight_bytes / 1e9 < fp8_gb[1]
    found = plan(BUDGETS, "auto", [fp8], steps)
    assert found.policy == "none" and found.placement("dit").blocks == ()


@pytest.mark.parametrize("variant, frames, height, width, contexts", [("animate", 77, 720, 1280, 1),
                                                                       ("s2v", 81, 704, 1024, 2)])
def test_where_the_fp8_dit_does_not_fit_whole_its_fp8_blocks_stream(variant, frames, height, width, contexts):
    """The docs' 24 GiB tables: Animate at its default 1280x720, S2V at 1024x704 (an 80-frame clip
    and its reference frame, both guidance passes' contexts)."""
    config, headers = _released(variant)
    bf16 = component_size("dit", headers, 2, keeps_fp32=dit_keeps_fp32, blocks=True)
    grid = latent_grid(frames, height, width, "wan2.1")
    steps = [StepDemand("denoise", ("dit",), denoise_bytes(config, headers, grid, 2, prepared_contexts=contexts))]
    with pytest.raises(MemoryPlanError):
        plan(BUDGETS, "auto", [attrs.evolve(bf16, block_bytes=(), fp8_block_bytes=()).as_fp8()], steps)
    found = plan(BUDGETS, "auto", [bf16.as_fp8()], steps)
    tiers = found.placement("dit").blocks
    assert found.policy == "stream" and 0 < tiers.count("host") < tiers.count("device")
    assert found.peaks[0].device_bytes <= BUDGETS.device_bytes
    streamed_bf16 = plan(BUDGETS, "auto", [bf16], steps).placement("dit").blocks
    assert streamed_bf16.count("device") < tiers.count("device")  # fp8 blocks: more of them resident


@pytest.mark.parametrize("variant", ["animate", "s2v"])
def test_the_plan_sizes_the_dit_at_the_bytes_it_loads_in_bf16_with_its_own_fp32_islands(tmp_path, variant):
    """S2V's audio encoder and Animate's motion direction basis and blur kernels stay fp32 in a
    bf16 run: the plan counts them so, and its DiT bytes are the loaded model's, whole and in fp8
    (the tiny files hold fp32, as a bf16 release's islands would be read up)."""
    import torch

    from wanflow.memory.dit_variants import load_variant, variant_of
    from wanflow.memory.pool import model_bytes
    from wanflow.steps.memory_plan import component_sizes

    if variant == "animate":
        from tests.models._animate_fixtures import seeded_state, tiny_config, write_checkpoint

        write_checkpoint(tmp_path, seeded_state(tiny_config()), shards=2)
    else:
        from tests.models.test_s2v_loading import released_layout
        from tests.models.test_s2v_model import tiny

        released_layout(tmp_path, tiny(seed=3).state_dict())
    files = sorted(tmp_path.glob("*.safetensors"))
    (size,) = component_sizes({"dit": files}, 2, fp8=False)
    for storage, planned in (("compute", size.weight_bytes), ("fp8", size.as_fp8().weight_bytes)):
        model = load_variant(variant_of(files), files, torch.bfloat16, "cpu", "sdpa", storage, ())
        kept = {n for n, p in model.state_dict().items() if p.dtype == torch.float32}
        assert model_bytes(model) == planned, (storage, sorted(kept))
