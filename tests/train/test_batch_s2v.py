"""Speech-to-video samples in one batch: each keeps its own audio and pose, and the DiT reads each
sample's latent frame 0 as its reference, exactly as it does for that sample alone."""

from __future__ import annotations

import torch

from tests.e2e._layout_s2v import s2v_state, tiny_s2v_config
from tests.train._batching import batched_and_alone
from wanflow.models.s2v import S2VDiT, S2VExtras


def _sample(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    extras = S2VExtras(audio=torch.randn(1, 25, 24, 8, generator=g), ref_latent=torch.randn(1, 16, 1, 2, 2, generator=g),
                       pose=torch.randn(1, 16, 2, 2, 2, generator=g))
    return {"context": torch.randn(1, 5, 64, generator=g), "x0": torch.randn(1, 16, 3, 2, 2, generator=g),
            "extras": extras}


def test_a_batch_of_two_is_each_sample_s_velocity_in_turn():
    cfg = tiny_s2v_config()
    dit = S2VDiT(cfg)
    dit.load_state_dict(s2v_state(cfg, 7))
    dit.eval()
    a, b = _sample(0), _sample(1)
    x = torch.randn(2, 16, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300.0, 800.0])
    both, alone = batched_and_alone(dit, a, b, x, t)
    assert both.shape == (2, 16, 3, 2, 2)
    assert torch.equal(both[:, :, :1], x[:, :, :1])  # the reference frame comes back as it went in
    assert torch.allclose(both, alone, rtol=1e-5, atol=1e-5), (both - alone).abs().max()
