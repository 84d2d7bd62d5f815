"""fp32 islands, reduced precision, gradient checkpointing, attention kernels and input checks."""

from __future__ import annotations

import attrs
import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.models import dit as dit_module
from wanflow.models.attention import KERNELS, attention, register_kernel
from wanflow.models.dit import WanDiT, sinusoidal_embedding

from ._dit_fixtures import inputs, random_state, tiny_config


def _model(variant="t2v", seed=0, **overrides):
    cfg = tiny_config(variant, **overrides)
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg, seed=seed), strict=True)
    return model.eval()


def test_sinusoid_is_cos_first_in_float64():
    t = torch.tensor([0.0, 999.0])
    emb = sinusoidal_embedding(t, 8)
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    angles = 999.0 * freqs
    assert emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert torch.allclose(emb[1].double(), torch.cat([angles.cos(), angles.sin()]), atol=1e-7)


def test_sinusoid_follows_float64_where_diffusers_drifts_at_high_t():
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([999.0])
    half = 128
    angles = 999.0 * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    exact = torch.cat([angles.cos(), angles.sin()])[None]
    ours = sinusoidal_embedding(t, 256).double()
    theirs = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t).double()
    assert (ours - exact).abs().max() < 1e-6
    assert (theirs - exact).abs().max() > 1e-5  # fp32 frequencies: why parity tests keep t moderate


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_keeps_fp32_islands_and_stays_close(dtype, monkeypatch):
    model = _model("i2v", seed=1)
    inp = inputs(model.cfg, seed=2)
    with torch.no_grad():
        reference = model(**inp)
        model.set_compute_dtype(dtype)
        seen = {}
        original = model.embed_time
        monkeypatch.setattr(model, "embed_time", lambda t: seen.setdefault("e", original(t)))
        low = model(**inp)
    e, e0 = seen["e"]
    assert e.dtype == e0.dtype == torch.float32
    assert model.head.head.weight.dtype == model.blocks[0].modulation.dtype == torch.float32
    assert model.blocks[0].ffn[0].weight.dtype == dtype
    assert low.dtype == torch.float32  # the head's output
    rel = (low - reference).abs().max() / reference.abs().max()
    assert 0 < rel < 0.05, rel


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model("ti2v", seed=3)
    inp = inputs(model.cfg, seed=4)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(**inp).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert set(grads[0]) == set(grads[1])
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name
    assert grads[0]["blocks.0.self_attn.q.weight"].abs().max() > 0


def test_checkpointing_recomputes_blocks(monkeypatch):
    model = _model("t2v", seed=5)
    model.gradient_checkpointing = True
    calls = []
    monkeypatch.setattr(dit_module.Block, "forward", _counting(dit_module.Block.forward, calls))
    model(**inputs(model.cfg)).sum().backward()
    assert len(calls) == 2 * model.cfg.num_layers  # forward + recompute in backward


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapped


def test_attention_kernels_agree_and_are_pluggable():
    q, k, v = (torch.randn(2, 9, 3, 32) for _ in range(3))
    sdpa, math = attention(q, k, v, "sdpa"), attention(q, k, v, "math")
    assert torch.allclose(sdpa, math, atol=1e-5)
    with pytest.raises(ModelInputError, match="already registered"):
        register_kernel("sdpa", KERNELS["math"])
    with pytest.raises(ModelInputError, match="'flash3' is not registered"):
        WanDiT(tiny_config("t2v"), attention_kernel="flash3")


def test_math_kernel_model_matches_sdpa_model():
    model = _model("i2v-a14b", seed=6)
    inp = inputs(model.cfg, seed=7)
    with torch.no_grad():
        a = model(**inp)
        model.attention_kernel = "math"
        b = model(**inp)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_context_is_zero_padded_to_512_not_masked():
    model = _model("t2v", seed=8)
    inp = inputs(model.cfg, seed=9, text_tokens=5)
    padded = torch.nn.functional.pad(inp["context"], (0, 0, 0, 507))
    with torch.no_grad():
        short, full = model(**inp), model(**{**inp, "context": padded})
        model.cfg = attrs.evolve(model.cfg, text_len=5)  # attend to the real tokens only
        unpadded = model(**inp)
    assert torch.allclose(short, full, atol=1e-6)
    # the zero slots go through text_embedding (bias-driven, non-zero) and are attended to
    assert (short - unpadded).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("variant", "change", "match"),
    [
        ("t2v", {"x": torch.zeros(1, 15, 3, 8, 8)}, "15 channels"),
        ("i2v", {"y": None}, "16 channels"),
        ("t2v", {"x": torch.zeros(1, 16, 3, 7, 8)}, "multiples of the patch size"),
        ("t2v", {"context": torch.zeros(1, 513, 4096)}, "at most 512"),
        ("t2v", {"context": torch.zeros(1, 7, 768)}, r"expected \(1, <=512, 4096\)"),
        ("t2v", {"t": torch.zeros(1, 5)}, r"per token \(1, 48\)"),
        ("i2v", {"clip_fea": None}, "needs CLIP tokens"),
        ("flf2v", {"clip_fea": torch.zeros(1, 257, 1280)}, r"expected \(1, 514, 1280\)"),
        ("t2v", {"clip_fea": torch.zeros(1, 257, 1280)}, "takes no CLIP"),
    ],
)
def test_bad_inputs_fail_before_work(variant, change, match):
    cfg = tiny_config(variant)
    model = WanDiT(cfg)
    with pytest.raises(ModelInputError, match=match):
        model(**{**inputs(cfg), **change})


def test_unpatchify_puts_channels_fastest():
    cfg = attrs.evolve(tiny_config("t2v"), out_dim=3)
    model = WanDiT(cfg)
    grid = (1, 2, 3)
    feats = torch.arange(6 * 4 * 3.0).reshape(1, 6, 12)  # token, then (pt, ph, pw, c)
    video = model.unpatchify(feats, grid)  # (1, 3, 1, 4, 6)
    token, ph, pw, c = 4, 1, 0, 2  # token 4 = (h 1, w 1)
    assert video[0, c, 0, 2 * 1 + ph, 2 * 1 + pw] == feats[0, token, (ph * 2 + pw) * 3 + c]


@pytest.mark.parametrize("per_token", [False, True])
def test_modulation_and_gated_residual_round_once_from_fp32_with_or_without_autograd(per_token):
    """Inference writes the fp32 result straight into bf16, training takes the op's own result:
    both are the fp32 value rounded once (bit for bit), and training still gets gradients."""
    from wanflow.models.dit import gated_residual, modulate

    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(2, 9, 32, generator=gen).bfloat16() for _ in range(2))
    shape = (2, 9, 32) if per_token else (2, 1, 32)
    shift, scale, gate = (torch.randn(shape, generator=gen) for _ in range(3))
    expected_mod = (shift + x.float() * (1 + scale)).bfloat16()
    expected_res = (x.float() + y.float() * gate).bfloat16()
    with torch.no_grad():
        assert torch.equal(modulate(x, shift, scale), expected_mod)
        assert torch.equal(gated_residual(x, y, gate), expected_res)
    trained = x.clone().requires_grad_()
    out = modulate(trained, shift, scale)
    assert torch.equal(out, expected_mod) and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.allclose(trained.grad.float(), (1 + scale).expand(2, 9, 32).bfloat16().float(), rtol=1e-2)
    assert torch.equal(gated_residual(x, y, gate.requires_grad_()), expected_res)
