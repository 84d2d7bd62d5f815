"""Batches of a derivative family: each sample's DiT extras joined along the batch, and samples whose
conditioning differs refused rather than silently mixed."""

from __future__ import annotations

import pytest
import torch

from wanflow.models.dit_extras import DitExtras
from wanflow.train.batch import collate


def _sample(seed: int, **extras) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"context": torch.randn(1, 3 + seed, 8, generator=g), "x0": torch.randn(1, 4, 2, 2, 2, generator=g),
            "y": torch.randn(1, 5, 2, 2, 2, generator=g), "extras": DitExtras(**extras)}


def test_extras_are_joined_along_the_batch_in_sample_order():
    a = _sample(0, reference=torch.full((1, 4, 2, 2), 1.0), modulation=torch.full((1, 6, 8), 2.0), vace_scale=0.5)
    b = _sample(1, reference=torch.full((1, 4, 2, 2), 3.0), modulation=torch.full((1, 6, 8), 4.0), vace_scale=0.5)
    batch = collate([a, b], "cpu")
    assert batch.extras.reference[:, 0, 0, 0].tolist() == [1.0, 3.0]
    assert batch.extras.modulation[:, 0, 0].tolist() == [2.0, 4.0]
    assert batch.extras.vace_scale == 0.5 and batch.extras.camera is None
    assert torch.equal(batch.y, torch.cat([a["y"], b["y"]])) and batch.context.shape == (2, 4, 8)


def test_samples_with_and_without_an_extra_or_a_part_cannot_share_a_batch():
    with pytest.raises(ValueError, match="reference"):
        collate([_sample(0, reference=torch.ones(1, 4, 2, 2)), _sample(1)], "cpu")
    plain = _sample(1)
    del plain["y"]
    with pytest.raises(ValueError, match="'y'"):
        collate([_sample(0), plain], "cpu")
    with pytest.raises(ValueError, match="VACE scales"):
        collate([_sample(0, vace_scale=0.5), _sample(1, vace_scale=1.0)], "cpu")
