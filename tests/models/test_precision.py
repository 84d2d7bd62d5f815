"""bf16 weights on a CPU without bf16 kernels: stored bf16, computed in fp32, close to fp32."""

from __future__ import annotations

import pytest
import torch

from tests.models._checkpoints import clip_official_state, umt5_official_state
from tests.models._dit_fixtures import inputs, random_state, tiny_config
from tests.models.vae._fixtures import TINY, latents, random_vae
from wanflow.models import precision
from wanflow.models.dit import WanDiT


@pytest.mark.parametrize(("native", "dtype", "expected"), [
    (False, torch.bfloat16, torch.float32), (False, torch.float16, torch.float32),
    (True, torch.bfloat16, torch.bfloat16), (False, torch.float32, torch.float32),
])
def test_compute_dtype_upcasts_only_without_native_kernels(monkeypatch, native, dtype, expected):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: native)
    assert precision.compute_dtype(torch.zeros(1, dtype=dtype)) == expected
    assert precision.compute_dtype(torch.zeros(1, dtype=dtype, device="meta")) == dtype  # not a CPU


def test_the_upcast_conv_equals_an_fp32_conv_of_the_bf16_values(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: False)
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).bfloat16() for s in ((1, 4, 3, 5, 5), (6, 4, 3, 3, 3), (6,)))
    out = precision.conv3d(x, w, b, 1, (0, 1, 1))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.nn.functional.conv3d(x.float(), w.float(), b.float(), 1, (0, 1, 1)).bfloat16())


@pytest.mark.parametrize(("kernel", "stride", "padding", "block", "weight_block", "blocks_seen"), [
    ((3, 3, 3), 1, (0, 1, 1), 4 * 200, 10**6, [(4, 5, 6)] * 2 + [(3, 5, 6)]),  # 2 output frames per block
    ((3, 3, 3), (2, 1, 1), (0, 1, 1), 5 * 200, 10**6, [(5, 5, 6), (3, 5, 6)]),  # time stride 2: 3 outputs
    ((3, 3, 3), 1, (0, 1, 1), 3 * 200, 10**6, [(3, 5, 6), (3, 4, 6)] * 5),  # a frame too large: rows split
    ((1, 3, 3), (1, 2, 2), 0, 3 * 40, 10**6, [(1, 3, 6)] * 14),  # the 2x down conv: 2 rows of 2 outputs
    ((3, 3, 3), 1, (0, 1, 1), 10**6, 300, [(7, 5, 2)] * 3),  # 648 weights > 300: 3 blocks of 2 channels
    ((1, 3, 3), 1, (0, 1, 1), 1, 1, [(1, 3, 1)] * 35 * 6),  # budgets below one row/channel: progress
])  # rows: the input rows a block sees, with the zero rows of padding it reaches
def test_the_upcast_conv_runs_over_blocks_of_frames_rows_and_channels(monkeypatch, kernel, stride, padding, block,
                                                                      weight_block, blocks_seen):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: False)
    monkeypatch.setattr(precision, "BLOCK_ELEMENTS", block)  # x: a row 2 x 4 x 5 = 40 elements, a frame 200
    monkeypatch.setattr(precision, "WEIGHT_BLOCK_ELEMENTS", weight_block)
    seen, kernel_call, real = [], precision._conv3d, torch.nn.functional.conv3d
    monkeypatch.setattr(precision, "_conv3d", lambda x, w, *a: seen.append((*x.shape[2:4], w.shape[0])) or
                        kernel_call(x, w, *a))
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*s, generator=g).bfloat16() for s in ((2, 4, 7, 5, 5), (6, 4, *kernel), (6,)))
    out = precision.conv3d(x, w, b, stride, padding)
    ref = real(x.double(), w.double(), b.double(), stride, padding)
    assert seen == blocks_seen  # (frames, rows, output channels) of each block
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.allclose(out.double(), ref, rtol=2 ** -8, atol=1e-5)  # every block lands in place


@pytest.mark.parametrize("onednn", [True, False])
def test_fp32_cpu_convs_take_onednn_below_torchs_size_line_with_the_same_values_and_grads(monkeypatch, onednn):
    calls, real = [], torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=g).requires_grad_() for s in ((1, 8, 3, 6, 6), (5, 8, 3, 3, 3), (5,)))
    monkeypatch.setattr(precision, "_onednn_ready", lambda: onednn)  # a torch built without oneDNN: False
    out = precision.conv3d(x, w[:, :, 1:], b, (1, 2, 2), (0, 1, 1))  # 8 x 3 x 6 <= 20480: torch's im2col
    ref_inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref = torch.nn.functional.conv3d(ref_inputs[0], ref_inputs[1][:, :, 1:], ref_inputs[2], (1, 2, 2), (0, 1, 1))
    assert len(calls) == (1 if onednn else 0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (out * ref.detach()).sum().backward(), (ref * ref.detach()).sum().backward()  # training goes through it too
    for mine, theirs in zip((x, w, b), ref_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("width", "block"), [(8, 24), (2, 8)])  # 3x3 blocks; 4 outputs x 2 tokens
def test_the_blocked_upcast_linear_equals_one_fp32_product(monkeypatch, width, block):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: False)
    monkeypatch.setattr(precision, "BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*s, generator=g).bfloat16() for s in ((2, 5, width), (7, width), (7,)))
    out = precision.linear(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())  # (2, 5, 7)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 7)
    assert torch.allclose(out.double(), ref, rtol=2 ** -8, atol=1e-6)  # every block lands in place


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_vae_stores_bf16_and_convolves_in_the_kernel_dtype(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: native)
    seen = []
    real = precision._conv3d
    monkeypatch.setattr(precision, "_conv3d", lambda x, w, *a: seen.append((x.dtype, w.dtype)) or real(x, w, *a))
    vae = random_vae(TINY["wan2.1"]).to(torch.bfloat16)
    outputs = []
    hook = vae.decoder.conv1.register_forward_hook(lambda m, i, o: outputs.append(o.dtype))
    vae.decode(latents(vae, 2, 1, 1))
    hook.remove()
    kernel = torch.bfloat16 if native else torch.float32
    assert seen and set(seen) == {(kernel, kernel)}
    assert outputs == [torch.bfloat16, torch.bfloat16]  # activations between layers stay bf16


@pytest.mark.parametrize("version", ["wan2.1", "wan2.2"])
def test_a_bf16_vae_on_this_cpu_stays_within_bf16_rounding_of_fp32(version):
    vae = random_vae(TINY[version]).to(torch.bfloat16)
    z = latents(vae, 3)
    got = vae.decode(z)
    ref = vae.float().decode(z)  # the same bf16-valued weights, all in fp32
    err = ((got - ref).norm() / ref.norm()).item()
    assert 0 < err < 2e-2, err  # not bit-equal (bf16 activations), yet bf16-close


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_dit_multiplies_in_the_kernel_dtype_and_keeps_bf16_activations(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: native)
    seen = set()
    real = torch.nn.functional.linear
    monkeypatch.setattr(precision.F, "linear", lambda x, w, b=None: seen.add((x.dtype, w.dtype)) or real(x, w, b))
    cfg = tiny_config("t2v")
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg), strict=True)
    model.eval().set_compute_dtype(torch.bfloat16)
    blocks = []
    model.blocks[0].register_forward_hook(lambda m, i, o: blocks.append(o.dtype))
    with torch.no_grad():
        model(**inputs(cfg))
    fp32, bf16 = torch.float32, torch.bfloat16
    assert seen == ({(fp32, fp32), (bf16, bf16)} if native else {(fp32, fp32)})  # fp32 islands either way
    assert blocks == [bf16]


@pytest.mark.parametrize("which", ["umt5", "clip"])
def test_the_transformers_encoders_adopt_the_rule_without_changing_their_weights(monkeypatch, which):
    from wanflow.models import image_encoder, text_encoder

    monkeypatch.setattr(precision, "cpu_has_native", lambda _: False)
    if which == "umt5":
        model = text_encoder.build_model(umt5_official_state(heads=4, layers=2), source="t5.pth",
                                         dtype=torch.bfloat16)
        x = torch.tensor([[5, 9, 3, 1]])
        run = lambda m: m(input_ids=x).last_hidden_state  # noqa: E731
    else:
        model = image_encoder.build_model(clip_official_state(), source="clip.pth", dtype=torch.bfloat16)
        x = torch.rand(1, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(0))
        run = lambda m: m(pixel_values=x.to(m.dtype)).last_hidden_state  # noqa: E731
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is precision.Linear for m in linears)
    seen = set()
    real = torch.nn.functional.linear
    monkeypatch.setattr(precision.F, "linear", lambda x, w, b=None: seen.add((x.dtype, w.dtype)) or real(x, w, b))
    with torch.no_grad():
        low = run(model)
        assert seen == {(torch.float32, torch.float32)}  # every projection multiplied in fp32
        ref = run(model.float())  # the same bf16-valued weights, all fp32
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1).min() > 0.99  # random weights


def test_an_fp32_input_meets_bf16_weights_in_fp32():
    """An fp32 island (head, time modulation) whose weights were cast to bf16 with the whole model."""
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 5, 24, generator=g), torch.randn(7, 24, generator=g), torch.randn(7, generator=g)
    out = precision.linear(x, w.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w.bfloat16().float(), b.bfloat16().float()))


def test_a_dit_cast_whole_to_bf16_trains():
    """DeepSpeed's bf16 engine casts every parameter, the fp32 islands too: the DiT still runs
    forward and backward, close to its fp32 self."""
    cfg = tiny_config()
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg))
    args = inputs(cfg)
    reference = model(**args)
    cast = WanDiT(cfg)
    cast.load_state_dict(random_state(cfg))
    cast = cast.bfloat16()
    out = cast(**args)
    out.float().square().mean().backward()
    assert float((out.float() - reference).abs().max() / reference.abs().max()) < 0.02
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in cast.parameters() if p.requires_grad)
