"""The patch report: exact counts per module kind, every unplaced key listed, wrong LoRAs refused.

Planning reads shapes only, so the real variants are planned against from meta-device builds
(no memory), as they would be from a checkpoint's header.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.models._dit_fixtures import tiny_config
from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.lora.delta import Full, LoHa, LoKr, LoraFile, LowRank
from wanflow.lora.report import delta_shape, looks_made_for, module_kind, plan_patches
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import VARIANTS
from wanflow.models.loading import build_on_meta


def shapes_of(cfg) -> dict[str, tuple[int, ...]]:
    model = build_on_meta(lambda: WanDiT(cfg))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def low_rank(out: int, inp: int, rank: int = 2, device: str = "meta") -> LowRank:
    return LowRank(torch.empty(rank, inp, device=device), torch.empty(out, rank, device=device))


def full(*shape: int) -> Full:
    return Full(torch.empty(*shape, device="meta"))


def i2v_style_lora(cfg) -> LoraFile:
    """What a Wan2.1 I2V trainer writes for `cfg`'s shapes: attention (image K/V included), FFN,
    a few full deltas, head, embeddings; and two keys its reader could not read."""
    dim, ffn, deltas = cfg.dim, cfg.ffn_dim, {}
    for b in range(cfg.num_layers):
        for part in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                     "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                     "cross_attn.k_img", "cross_attn.v_img"):
            deltas[f"blocks.{b}.{part}.weight"] = low_rank(dim, dim)
        deltas[f"blocks.{b}.ffn.0.weight"] = low_rank(ffn, dim)
        deltas[f"blocks.{b}.ffn.2.weight"] = low_rank(dim, ffn)
        deltas[f"blocks.{b}.ffn.2.bias"] = full(dim)
        deltas[f"blocks.{b}.modulation"] = full(1, 6, dim)
        deltas[f"blocks.{b}.cross_attn.norm_k_img.weight"] = full(dim)
        deltas[f"blocks.{b}.norm3.weight"] = full(dim)
    deltas["head.head.weight"] = low_rank(4 * cfg.out_dim, dim)
    deltas["head.modulation"] = full(1, 2, dim)
    deltas["time_projection.1.weight"] = low_rank(6 * dim, dim)
    conv_down, conv_up = torch.empty(2, cfg.in_dim, 1, 2, 2), torch.empty(dim, 2, 1, 1, 1)
    deltas["patch_embedding.weight"] = LowRank(conv_down, conv_up)
    unread = ("lora_unet_blocks_0_dwpose.alpha", "lora_unet_blocks_1_dwpose.alpha", "lora_te_x.alpha")
    reasons = {key: "no Wan DiT module of this name" for key in unread[:2]}
    return LoraFile("musubi", deltas, unread=unread, reasons=reasons)


def test_counts_by_kind_and_unplaced_keys_are_exact():
    cfg = tiny_config("t2v")  # 2 blocks, no image attention
    lora = i2v_style_lora(cfg)
    report = plan_patches([(lora, 0.8)], shapes_of(cfg), "tiny-t2v", labels=["style.safetensors"])
    (patches,) = report.loras
    assert patches.by_kind == {"self-attention": 8, "cross-attention": 8, "ffn": 6, "norms": 2,
                               "modulation": 3, "head": 1, "embeddings": 2}
    assert len(patches.patched) == 30
    assert sorted(patches.absent) == sorted(
        f"blocks.{b}.cross_attn.{p}.weight" for b in (0, 1) for p in ("k_img", "v_img", "norm_k_img"))
    assert patches.unread == lora.unread and patches.ranks == (2,)
    assert patches.made_for == "a Wan DiT (width 128, image cross-attention)"


def test_the_same_lora_places_everything_on_an_i2v_model():
    cfg = tiny_config("i2v")
    (patches,) = plan_patches([(i2v_style_lora(cfg), 1.0)], shapes_of(cfg)).loras
    assert patches.absent == () and len(patches.patched) == 36
    assert patches.by_kind["cross-attention"] == 12 and patches.by_kind["norms"] == 4


def test_report_renders_readable_lines_and_a_json_dict():
    cfg = tiny_config("t2v")
    lora = i2v_style_lora(cfg)
    report = plan_patches([(lora, 0.8)], shapes_of(cfg), "tiny-t2v", labels=["style.safetensors"])
    assert report.lines() == [
        "LoRA style.safetensors (musubi, rank 2, scale 0.8): patched 30 parameters: self-attention 8, "
        "cross-attention 8, ffn 6, norms 2, modulation 3, head 1, embeddings 2",
        "  not in this model (6): blocks.*.cross_attn.k_img.weight ×2, "
        "blocks.*.cross_attn.v_img.weight ×2, blocks.*.cross_attn.norm_k_img.weight ×2",
        "  unread keys (2): lora_unet_blocks_0_dwpose.alpha, lora_unet_blocks_1_dwpose.alpha: "
        "no Wan DiT module of this name",
        "  unread keys (1): lora_te_x.alpha",
    ]
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["model"] == "tiny-t2v"
    (entry,) = doc["loras"]
    assert entry["patched"] == 30 and entry["by_kind"]["modulation"] == 3 and entry["scale"] == 0.8
    assert len(entry["absent"]) == 6 and entry["unread"] == {
        "lora_unet_blocks_0_dwpose.alpha": "no Wan DiT module of this name",
        "lora_unet_blocks_1_dwpose.alpha": "no Wan DiT module of this name", "lora_te_x.alpha": "not read"}
    assert entry["mismatched"] == []


def test_module_kinds():
    expected = {
        "blocks.3.self_attn.o.bias": "self-attention", "blocks.0.cross_attn.k_img.weight": "cross-attention",
        "blocks.0.cross_attn.norm_k_img.weight": "norms", "blocks.0.self_attn.norm_q.weight": "norms",
        "blocks.0.norm3.bias": "norms", "blocks.9.ffn.2.weight": "ffn", "blocks.0.modulation": "modulation",
        "head.modulation": "modulation", "head.head.bias": "head", "img_emb.proj.1.weight": "embeddings",
        "time_projection.1.weight": "embeddings", "patch_embedding.weight": "embeddings",
        "vace_blocks.0.proj.weight": "other",
    }
    assert {name: module_kind(name) for name in expected} == expected


@pytest.mark.parametrize(("lora_model", "target"), [
    ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"), ("wan2.2-ti2v-5b", "wan2.1-t2v-1.3b"),
    ("wan2.1-i2v-14b-480p", "wan2.2-ti2v-5b"),
])
def test_a_lora_for_another_architecture_is_refused_naming_it(lora_model, target):
    made = VARIANTS[lora_model]
    lora = i2v_style_lora(made)
    with pytest.raises(ModelLoadError) as err:
        plan_patches([(lora, 1.0)], shapes_of(VARIANTS[target]), target, labels=["big.safetensors"])
    message = str(err.value)
    assert message.startswith("LoRA big.safetensors: ") and f"parameters of {target}" in message
    assert f"looks made for {looks_made_for({k: delta_shape(d) for k, d in lora.deltas.items()})}" in message
    assert {"wan2.1-t2v-1.3b": "Wan2.1 T2V-1.3B (width 1536", "wan2.2-ti2v-5b": "Wan2.2 TI2V-5B (width 3072",
            "wan2.1-i2v-14b-480p": "Wan2.1 I2V-14B / FLF2V-14B"}[lora_model] in message


def test_looks_made_for_names_the_released_widths():
    def made_for(dim, image=False):
        shapes = {"blocks.0.self_attn.q.weight": (dim, dim), "blocks.0.modulation": (1, 6, dim)}
        if image:
            shapes["blocks.0.cross_attn.k_img.weight"] = (dim, dim)
        return looks_made_for(shapes)

    assert made_for(1536) == "Wan2.1 T2V-1.3B (width 1536)"
    assert made_for(5120) == "Wan2.1 14B / Wan2.2 A14B (width 5120)"
    assert made_for(5120, image=True) == "Wan2.1 I2V-14B / FLF2V-14B (width 5120, image cross-attention)"
    assert made_for(3072) == "Wan2.2 TI2V-5B (width 3072)"
    assert looks_made_for({"vace_blocks.0.proj.weight": (5120, 5120)}).startswith("no Wan DiT")


def test_a_lora_that_patches_nothing_is_an_error_naming_what_it_was_made_for():
    dim = VARIANTS["wan2.1-i2v-14b-480p"].dim
    image_only = LoraFile("comfyui", {f"blocks.{b}.cross_attn.{p}.weight": low_rank(dim, dim)
                                      for b in range(40) for p in ("k_img", "v_img")})
    with pytest.raises(ModelLoadError) as err:
        plan_patches([(image_only, 1.0)], shapes_of(VARIANTS["wan2.2-i2v-a14b"]), "wan2.2-i2v-a14b")
    assert str(err.value) == (
        "LoRA #1 patches nothing in wan2.2-i2v-a14b: its 80 deltas name no parameter of it; it looks "
        "made for Wan2.1 I2V-14B / FLF2V-14B (width 5120, image cross-attention): use a LoRA trained "
        "for wan2.2-i2v-a14b, or run it with the model it was made for.")


def test_an_empty_lora_is_an_error_that_lists_its_unread_keys():
    empty = LoraFile("unknown", {}, unread=("lora_te_text_model.q.lora_down.weight",))
    with pytest.raises(ModelLoadError, match=r"it holds no delta \(1 keys unread: lora_te_text_model"):
        plan_patches([(empty, 1.0)], shapes_of(tiny_config()))


def test_every_problem_of_every_lora_is_reported_at_once():
    cfg = tiny_config()
    wrong = LoraFile("peft", {"blocks.0.self_attn.q.weight": low_rank(1536, 1536)})
    nothing = LoraFile("peft", {"vace_blocks.0.proj.weight": low_rank(128, 128)})
    good = LoraFile("peft", {"blocks.0.self_attn.q.weight": low_rank(128, 128)})
    with pytest.raises(ModelLoadError) as err:
        plan_patches([(wrong, 1.0), (good, 1.0), (nothing, 1.0)], shapes_of(cfg))
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("LoRA #1: 1 of its deltas have other shapes")
    assert "blocks.0.self_attn.q.weight: LoRA 1536×1536, model 128×128" in lines[0]
    assert lines[1].startswith("LoRA #3 patches nothing in this model (a Wan DiT (width 128))")


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_a_non_finite_scale_is_refused(scale):
    good = LoraFile("peft", {"blocks.0.self_attn.q.weight": low_rank(128, 128)})
    with pytest.raises(ModelInputError, match="LoRA #1: scale .* is not a finite number"):
        plan_patches([(good, scale)], shapes_of(tiny_config()))


def test_delta_shapes_are_read_off_the_factors():
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    deltas = [LowRank(rand(3, 10), rand(6, 3)), LowRank(rand(3, 4, 1, 2, 2), rand(6, 3, 1, 1, 1)),
              LoHa(rand(6, 2), rand(2, 10), rand(6, 2), rand(2, 10)), LoKr(w1=rand(2, 5), w2=rand(3, 2)),
              LoKr(w1a=rand(2, 1), w1b=rand(1, 5), w2a=rand(3, 1), w2b=rand(1, 2)), Full(rand(1, 6, 4))]
    assert [delta_shape(d) for d in deltas] == [tuple(d.tensor().shape) for d in deltas]
    assert delta_shape(low_rank(5120, 13824)) == (5120, 13824)  # meta factors: nothing computed


def test_a_flattened_conv_delta_fits_its_kernel():
    cfg = tiny_config()
    loha = LoHa(*(torch.empty(s, device="meta") for s in ((128, 2), (2, 64), (128, 2), (2, 64))))
    (patches,) = plan_patches([(LoraFile("lycoris", {"patch_embedding.weight": loha}), 1.0)],
                              shapes_of(cfg)).loras
    assert patches.patched == ("patch_embedding.weight",)
