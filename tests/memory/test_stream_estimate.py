"""A Video-As-Prompt denoise forward, as the planner sizes it from the checkpoint's names, against
the live tensor bytes of tiny models' forwards (within 20 %, like every forward estimate)."""

from __future__ import annotations

import pytest
import torch

from tests.memory.test_train_parts import vap_batch, vap_model
from wanflow.memory import estimates
from wanflow.memory.stream_estimate import joined_blocks
from wanflow.models import vap_keys
from wanflow.models.dit import WanDiT
from wanflow.models.rope import rope_table
from wanflow.models.vap import reference_rope_table
from wanflow.models.vap_extras import VapExtras
from wanflow.steps.memory_plan import denoise_bytes

from ..models._dit_fixtures import tiny_config
from ._ledger import LiveBytes, weight_bytes

CASES = {"4 blocks, 2 joined": (4, (0, 2), (5, 16, 16), torch.float32),
         "a larger grid": (4, (0, 2), (9, 32, 32), torch.float32),
         "8 blocks, 3 joined": (8, (0, 3, 6), (9, 16, 16), torch.float32),
         "bf16": (4, (0, 2), (9, 32, 32), torch.bfloat16)}


@pytest.mark.parametrize("layers, joined, grid, dtype", CASES.values(), ids=CASES.keys())
def test_a_reference_stream_forward(layers, joined, grid, dtype):
    model = vap_model(layers, joined).eval().set_compute_dtype(dtype)
    cfg, gen, encoded = model.cfg, torch.Generator().manual_seed(0), vap_batch(model)
    extras = VapExtras(vap_latents=torch.randn(1, cfg.in_dim, *grid, generator=gen),
                       vap_context=encoded.extras.vap_context, vap_clip=encoded.extras.vap_clip)
    rope_table.cache_clear()  # each forward makes (and keeps) its RoPE tables, whatever ran before
    reference_rope_table.cache_clear()
    with torch.no_grad(), LiveBytes(model) as ledger:
        model(torch.randn(1, cfg.out_dim, *grid, generator=gen), torch.tensor([500.0]), encoded.context,
              clip_fea=encoded.clip, y=torch.randn(1, cfg.in_dim - cfg.out_dim, *grid, generator=gen), extras=extras)
    released = vap_keys.to_diffusers(model.state_dict())  # the names the planner reads off the release
    assert joined_blocks(released) == len(joined)
    predicted = denoise_bytes(cfg, released, grid, dtype.itemsize, prepared_contexts=0)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(model), rel=0.2)


def test_a_dit_without_a_reference_stream_is_a_wan_dit():
    cfg = tiny_config("i2v")
    assert joined_blocks(WanDiT(cfg).state_dict()) == 0
    names = WanDiT(cfg).state_dict()
    assert denoise_bytes(cfg, names, (5, 16, 16), 2, 2) == estimates.dit_forward_bytes(cfg, (5, 16, 16), 2,
                                                                                      prepared_contexts=2)
