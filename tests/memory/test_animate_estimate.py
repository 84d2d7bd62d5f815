"""A Wan2.2-Animate denoise forward is a Wan I2V DiT's over the same tokens (the pose is added to
the video's, the face blocks' keys are a few face tokens per frame): the plain forward's estimate
holds within 20 % of a tiny model's forward, its face tokens prepared once per clip as the
denoise step prepares them."""

from __future__ import annotations

import pytest
import torch

from tests.memory.test_train_parts import animate_batch, animate_model
from wanflow.models.animate import AnimateExtras
from wanflow.models.rope import rope_table
from wanflow.steps.memory_plan import denoise_bytes

from ._ledger import LiveBytes, weight_bytes

CASES = {"5 blocks, one face block": (5, (5, 16, 16)), "a larger grid": (5, (9, 32, 32)),
         "10 blocks, two face blocks": (10, (9, 16, 16))}


@pytest.mark.parametrize("layers, grid", CASES.values(), ids=CASES.keys())
def test_an_animate_forward(layers, grid):
    model = animate_model(layers).eval()
    cfg, gen, encoded = model.cfg, torch.Generator().manual_seed(0), animate_batch(model)
    size = model.animate_config.motion.size
    with torch.no_grad():
        face = model.prepare_face(torch.rand(1, 3, 4 * grid[0] - 7, size, size, generator=gen) * 2 - 1)
        extras = AnimateExtras(pose=torch.randn(1, cfg.out_dim, grid[0] - 1, *grid[1:], generator=gen), face=face)
        rope_table.cache_clear()  # each forward makes (and keeps) its RoPE tables, whatever ran before
        with LiveBytes(model) as ledger:
            model(torch.randn(1, cfg.out_dim, *grid, generator=gen), torch.tensor([500.0]), encoded.context,
                  clip_fea=encoded.clip, y=torch.randn(1, cfg.in_dim - cfg.out_dim, *grid, generator=gen),
                  extras=extras)
    predicted = denoise_bytes(cfg, model.state_dict(), grid, 4, prepared_contexts=0)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(model), rel=0.2)
