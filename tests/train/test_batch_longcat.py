"""LongCat-Video's training call: samples batched together keep their own prompts' lengths and
continuation frames, the output's sign is flipped once, and gradient checkpointing over its blocks
changes no gradient."""

from __future__ import annotations

import torch

from tests.e2e._layout_longcat import CONFIG, longcat_state
from tests.train._batching import batched_and_alone
from wanflow.models.longcat import LongCatDiT
from wanflow.train.batch import collate, sft_loss
from wanflow.train.longcat import text_lengths
from wanflow.train.objective import Draw


def _dit() -> LongCatDiT:
    dit = LongCatDiT(CONFIG)
    dit.load_state_dict(longcat_state(7))
    return dit.eval()


def _sample(seed: int, length: int, cond: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"context": torch.randn(1, length, CONFIG.caption_channels, generator=g),
           "x0": torch.randn(1, 16, 3, 4, 4, generator=g)}
    if cond:
        out["longcat"] = torch.randn(1, 16, 1, 4, 4, generator=g)
    return out


def test_text_lengths_are_read_off_the_zero_padding():
    context = torch.zeros(3, 6, 4)
    context[0, :2] = 1.0
    context[1, :6] = 1.0
    context[2, :4] = 1.0
    context[2, 1] = 0.0  # a zero row among real ones does not end the prompt
    assert text_lengths(context).tolist() == [2, 6, 4]


def test_a_batch_of_prompts_of_two_lengths_is_each_sample_s_velocity_alone():
    dit = _dit()
    a, b = _sample(0, 3), _sample(1, 7)
    x = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300.0, 800.0])
    both, alone = batched_and_alone(dit, a, b, x, t)
    with torch.no_grad():
        raw = dit(x[:1], t[:1], a["context"])
    assert torch.allclose(both, alone, rtol=1e-5, atol=1e-5), (both - alone).abs().max()
    assert torch.equal(alone[:1], -raw)  # LongCat predicts x0 − noise: the velocity is its negative


def test_continuation_frames_are_written_clean_and_read_as_conditioning():
    dit = _dit()
    sample = _sample(2, 4, cond=True)
    batch = collate([sample], "cpu")
    noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    d = Draw(torch.tensor([10]), torch.tensor([0.6]), torch.tensor([600.0]), torch.tensor([1.0]), noise)
    x = 0.4 * batch.x0 + 0.6 * noise
    x[:, :, :1] = sample["longcat"]
    with torch.no_grad():
        expected = torch.mean((-dit(x, d.t, sample["context"], cond_frames=1) - (noise - batch.x0)) ** 2)
        assert torch.allclose(sft_loss(dit, batch, d), expected, rtol=1e-6)
        # without the continuation latents the loss is another number
        plain = collate([{k: v for k, v in sample.items() if k != "longcat"}], "cpu")
        assert not torch.allclose(sft_loss(dit, plain, d), expected, rtol=1e-3)


def test_gradient_checkpointing_recomputes_every_block_and_changes_no_gradient(monkeypatch):
    import wanflow.models.longcat as module

    calls = []
    real = module.checkpoint
    monkeypatch.setattr(module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    grads = []
    for checkpointing in (False, True):
        dit = _dit().train()
        dit.gradient_checkpointing = checkpointing
        sample = _sample(3, 5, cond=True)
        noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(4))
        d = Draw(torch.tensor([10]), torch.tensor([0.3]), torch.tensor([300.0]), torch.tensor([1.0]), noise)
        sft_loss(dit, collate([sample], "cpu"), d).backward()
        grads.append({n: p.grad.clone() for n, p in dit.named_parameters() if p.grad is not None})
    assert len(calls) == CONFIG.depth  # each block once, only with checkpointing on
    assert grads[0].keys() == grads[1].keys() and "blocks.1.attn.qkv.weight" in grads[0]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name
