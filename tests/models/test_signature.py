"""identify(): checkpoints recognised from real key/shape tables (meta tensors, so 14B costs nothing)."""

from __future__ import annotations

import pytest
import torch

from wanflow.models.signature import CheckpointSignature, identify


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def dit_state(dim, ffn, layers, in_dim=16, out_dim=16, *, image=False, emb_pos=False, vace=0, extra=()):
    """Official WanModel keys and shapes (reference §2.1)."""
    s = {"patch_embedding.weight": meta(dim, in_dim, 1, 2, 2), "patch_embedding.bias": meta(dim),
         "text_embedding.0.weight": meta(dim, 4096), "text_embedding.2.weight": meta(dim, dim),
         "time_embedding.0.weight": meta(dim, 256), "time_embedding.2.weight": meta(dim, dim),
         "time_projection.1.weight": meta(6 * dim, dim), "head.modulation": meta(1, 2, dim),
         "head.head.weight": meta(4 * out_dim, dim)}
    for i in range(layers):
        p = f"blocks.{i}."
        s |= {p + "modulation": meta(1, 6, dim), p + "norm3.weight": meta(dim),
              p + "ffn.0.weight": meta(ffn, dim), p + "ffn.2.weight": meta(dim, ffn)}
        for attn in ("self_attn", "cross_attn"):
            s |= {p + f"{attn}.{n}.weight": meta(dim, dim) for n in "qkvo"}
            s |= {p + f"{attn}.norm_q.weight": meta(dim), p + f"{attn}.norm_k.weight": meta(dim)}
        if image:
            s |= {p + "cross_attn.k_img.weight": meta(dim, dim), p + "cross_attn.norm_k_img.weight": meta(dim)}
    if image:
        s |= {"img_emb.proj.0.weight": meta(1280), "img_emb.proj.1.weight": meta(1280, 1280),
              "img_emb.proj.3.weight": meta(dim, 1280), "img_emb.proj.4.weight": meta(dim)}
    if emb_pos:
        s["img_emb.emb_pos"] = meta(1, 514, 1280)
    for i in range(vace):
        s |= {f"vace_blocks.{i}.after_proj.weight": meta(dim, dim), "vace_patch_embedding.weight": meta(dim, 96, 1, 2, 2)}
    return s | {k: meta(*shape) for k, shape in extra}


def diffusers_dit_state(dim, ffn, layers, in_dim=16, out_dim=16, image=False):
    """diffusers WanTransformer3DModel names (reference §2.1 mapping table)."""
    s = {"patch_embedding.weight": meta(dim, in_dim, 1, 2, 2),
         "condition_embedder.time_embedder.linear_1.weight": meta(dim, 256),
         "condition_embedder.text_embedder.linear_1.weight": meta(dim, 4096),
         "proj_out.weight": meta(4 * out_dim, dim), "scale_shift_table": meta(1, 2, dim)}
    for i in range(layers):
        s |= {f"blocks.{i}.attn1.to_q.weight": meta(dim, dim), f"blocks.{i}.ffn.net.0.proj.weight": meta(ffn, dim)}
    if image:
        s["condition_embedder.image_embedder.norm1.weight"] = meta(1280)
    return s


def vae21_state():
    return {"encoder.conv1.weight": meta(96, 3, 3, 3, 3), "encoder.downsamples.0.residual.0.gamma": meta(96, 1, 1, 1),
            "conv1.weight": meta(32, 32, 1, 1, 1), "conv2.weight": meta(16, 16, 1, 1, 1),
            "decoder.conv1.weight": meta(384, 16, 3, 3, 3)}


def vae22_state():
    return {"encoder.conv1.weight": meta(160, 12, 3, 3, 3),
            "encoder.downsamples.0.downsamples.0.residual.0.gamma": meta(160, 1, 1, 1),
            "conv1.weight": meta(96, 96, 1, 1, 1), "conv2.weight": meta(48, 48, 1, 1, 1),
            "decoder.conv1.weight": meta(1024, 48, 3, 3, 3)}


def umt5_state(layers=24):
    s = {"token_embedding.weight": meta(256384, 4096), "norm.weight": meta(4096)}
    for i in range(layers):
        s |= {f"blocks.{i}.pos_embedding.embedding.weight": meta(32, 64), f"blocks.{i}.attn.q.weight": meta(4096, 4096),
              f"blocks.{i}.ffn.fc1.weight": meta(10240, 4096)}
    return s


def clip_state(text=True):
    s = {"visual.patch_embedding.weight": meta(1280, 3, 14, 14), "visual.cls_embedding": meta(1, 1, 1280),
         "visual.pos_embedding": meta(1, 257, 1280)}
    s |= {f"visual.transformer.{i}.attn.to_qkv.weight": meta(3840, 1280) for i in range(32)}
    if text:
        s |= {"log_scale": meta(), "textual.token_embedding.weight": meta(250002, 1024)}
    return s


@pytest.mark.parametrize(
    ("state", "variant", "details"),
    [
        (dit_state(1536, 8960, 30), "wan2.1-t2v", {"dim": 1536, "num_layers": 30, "size": "1.3B", "num_heads": 12}),
        (dit_state(5120, 13824, 40), "wan2.1-t2v", {"dim": 5120, "num_layers": 40, "size": "14B", "ffn_dim": 13824}),
        (dit_state(5120, 13824, 40, 36, image=True), "wan2.1-i2v", {"in_dim": 36, "has_image_embedding": True}),
        (dit_state(5120, 13824, 40, 36, image=True, emb_pos=True), "wan2.1-flf2v", {"in_dim": 36}),
        (dit_state(5120, 13824, 40, 36), "wan2.2-i2v", {"in_dim": 36, "has_image_embedding": False}),
        (dit_state(3072, 14336, 30, 48, 48), "wan2.2-ti2v", {"size": "5B", "out_dim": 48, "num_heads": 24}),
        (dit_state(1536, 8960, 30, 36, image=True), "fun-inp", {"size": "1.3B"}),
        (dit_state(1536, 8960, 30, vace=15), "vace", {"vace_layers": 15}),
        (dit_state(1536, 8960, 30, 48, image=True, extra=[("ref_conv.weight", (1536, 16, 2, 2))]), "fun-control", {}),
        (dit_state(1536, 8960, 30, 32, image=True, extra=[("control_adapter.conv.weight", (1536, 1536, 2, 2))]),
         "fun-control-camera", {"in_dim": 32}),
        (dit_state(5120, 13824, 40, 52, extra=[("ref_conv.weight", (5120, 16, 2, 2))]), "wan2.2-fun-control", {}),
    ],
)
def test_official_dit_variants(state, variant, details):
    sig = identify(state)
    assert (sig.kind, sig.variant, sig.layout) == ("dit", variant, "official")
    assert {k: sig.details[k] for k in details} == details


def test_describe_a_dit():
    sig = identify(dit_state(5120, 13824, 40, 36, image=True))
    assert sig.describe() == "a Wan2.1 I2V DiT (14B, dim 5120, 40 layers, 36 input channels; official key layout)"


def test_diffusers_layout_dit():
    sig = identify(diffusers_dit_state(1536, 8960, 30))
    assert (sig.kind, sig.variant, sig.layout) == ("dit", "wan2.1-t2v", "diffusers")
    assert (sig.details["num_layers"], sig.details["ffn_dim"], sig.details["out_dim"]) == (30, 8960, 16)
    i2v = identify(diffusers_dit_state(5120, 13824, 40, 36, image=True))
    assert (i2v.variant, i2v.details["size"]) == ("wan2.1-i2v", "14B")


def test_comfyui_prefixed_single_file():
    state = {"model.diffusion_model." + k: v for k, v in dit_state(3072, 14336, 30, 48, 48).items()}
    sig = identify(state)
    assert (sig.kind, sig.variant, sig.layout, sig.details["num_layers"]) == ("dit", "wan2.2-ti2v", "comfyui", 30)


@pytest.mark.parametrize(
    ("state", "variant", "layout", "z_dim"),
    [
        (vae21_state(), "wan2.1", "official", 16),
        (vae22_state(), "wan2.2", "official", 48),
        ({"quant_conv.weight": meta(32, 32, 1, 1, 1), "post_quant_conv.weight": meta(16, 16, 1, 1, 1),
          "encoder.conv_in.weight": meta(96, 3, 3, 3, 3)}, "wan2.1", "diffusers", 16),
        ({"quant_conv.weight": meta(96, 96, 1, 1, 1), "post_quant_conv.weight": meta(48, 48, 1, 1, 1),
          "encoder.conv_in.weight": meta(160, 12, 3, 3, 3)}, "wan2.2", "diffusers", 48),
    ],
)
def test_vae_versions(state, variant, layout, z_dim):
    sig = identify(state)
    assert (sig.kind, sig.variant, sig.layout, sig.details["z_dim"]) == ("vae", variant, layout, z_dim)


def test_umt5_official_and_transformers_layouts():
    sig = identify(umt5_state())
    assert (sig.kind, sig.layout) == ("umt5", "official")
    assert {k: sig.details[k] for k in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff")} == {
        "vocab_size": 256384, "d_model": 4096, "num_layers": 24, "num_heads": 64, "d_ff": 10240}
    hf = {"shared.weight": meta(256384, 4096)}
    hf |= {f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight": meta(32, 64) for i in range(24)}
    got = identify(hf)
    assert (got.kind, got.layout, got.details["num_layers"]) == ("umt5", "diffusers", 24)


def test_classic_t5_with_one_shared_bias_is_not_umt5():
    t5 = {"shared.weight": meta(32128, 512),
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": meta(32, 8),
          "encoder.block.1.layer.0.SelfAttention.q.weight": meta(512, 512)}
    assert identify(t5).kind == "unknown"


def test_clip_visual_tower_and_whole_model():
    whole = identify(clip_state())
    assert (whole.kind, whole.details["width"], whole.details["num_layers"], whole.details["patch_size"]) == (
        "clip", 1280, 32, 14)
    assert whole.details["has_text_tower"] and not identify(clip_state(text=False)).details["has_text_tower"]
    assert whole.describe() == ("a CLIP image encoder (ViT width 1280, 32 layers, patch 14, with its text tower; "
                                "official key layout)")


def test_unknown_and_empty():
    sig = identify({"foo.weight": meta(3), "bar": meta(1)})
    assert sig == CheckpointSignature("unknown", "", "official", sig.details)
    assert sig.describe() == "an unrecognised checkpoint (2 tensors; first keys: bar, foo.weight)"
    assert identify({}).describe() == "an empty state dict"


def test_a_tiny_dit_is_recognised_without_a_released_size():
    sig = identify(dit_state(64, 128, 2))
    assert (sig.kind, sig.variant, sig.details["size"], sig.details["num_layers"]) == ("dit", "wan2.1-t2v", None, 2)
    assert sig.describe() == "a Wan T2V DiT (dim 64, 2 layers, 16 input channels; official key layout)"
