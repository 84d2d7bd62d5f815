"""CLIP image encoder: key conversion, the qkv split, official preprocessing, parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models.image_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    VIT_H_14,
    ImageEncoder,
    settings_from_state,
    to_transformers_keys,
    tower,
)

from ._checkpoints import clip_official_state

WIDTH, LAYERS, PATCH, SIZE = 160, 3, 8, 32


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    state = clip_official_state(width=WIDTH, layers=LAYERS, patch=PATCH, image_size=SIZE)
    path = tmp_path_factory.mktemp("clip") / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(state, path)
    return state, path


@pytest.fixture(scope="module")
def encoder(official):
    return ImageEncoder.from_checkpoint(official[1], dtype=torch.float32)


def independent_model(state) -> CLIPVisionModel:
    """transformers' CLIPVisionModel filled by a hand-written §2.5 mapping."""
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                              num_attention_heads=2, image_size=SIZE, patch_size=PATCH, hidden_act="gelu",
                              layer_norm_eps=1e-5)
    model = CLIPVisionModel(config).eval()
    vm = tower(model)
    with torch.no_grad():
        vm.embeddings.patch_embedding.weight.copy_(state["visual.patch_embedding.weight"])
        vm.embeddings.class_embedding.copy_(state["visual.cls_embedding"][0, 0])
        vm.embeddings.position_embedding.weight.copy_(state["visual.pos_embedding"][0])
        vm.pre_layrnorm.weight.copy_(state["visual.pre_norm.weight"])
        vm.pre_layrnorm.bias.copy_(state["visual.pre_norm.bias"])
        for i, layer in enumerate(vm.encoder.layers):
            p = f"visual.transformer.{i}."
            w, b = state[p + "attn.to_qkv.weight"], state[p + "attn.to_qkv.bias"]
            for j, proj in enumerate((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)):
                proj.weight.copy_(w[j * WIDTH:(j + 1) * WIDTH])
                proj.bias.copy_(b[j * WIDTH:(j + 1) * WIDTH])
            pairs = [(layer.self_attn.out_proj, "attn.proj"), (layer.mlp.fc1, "mlp.0"), (layer.mlp.fc2, "mlp.2"),
                     (layer.layer_norm1, "norm1"), (layer.layer_norm2, "norm2")]
            for module, name in pairs:
                module.weight.copy_(state[p + name + ".weight"])
                module.bias.copy_(state[p + name + ".bias"])
    return model


def test_conversion_covers_the_visual_tower_and_drops_the_rest(official):
    state, _ = official
    reference = CLIPVisionModel(settings_from_state(
        {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    ).to_transformers())
    prefix = "vision_model." if tower(reference) is not reference else ""
    converted = to_transformers_keys(state, prefix)
    assert set(converted) == set(reference.state_dict())
    assert len(converted) == 7 + 16 * LAYERS  # cls, pos, patch, 2 norms x 2; per layer 16 tensors
    assert converted[prefix + "embeddings.class_embedding"].shape == (WIDTH,)
    assert converted[prefix + "embeddings.position_embedding.weight"].shape == (17, WIDTH)
    assert prefix + "embeddings.patch_embedding.bias" not in converted  # pre-norm tower: no bias


def test_settings_read_from_shapes_and_released_constants(official):
    visual = {k.removeprefix("visual."): v for k, v in official[0].items() if k.startswith("visual.")}
    s = settings_from_state(visual)
    assert (s.width, s.num_layers, s.num_heads, s.patch_size, s.image_size, s.mlp_dim) == (160, 3, 2, 8, 32, 640)
    assert (VIT_H_14.image_size // VIT_H_14.patch_size) ** 2 + 1 == 257 and VIT_H_14.width // VIT_H_14.num_heads == 80


def test_qkv_split_reproduces_the_fused_attention_by_hand(official, encoder):
    state, _ = official
    p = "visual.transformer.0."
    x = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(1))
    qkv = x @ state[p + "attn.to_qkv.weight"].T + state[p + "attn.to_qkv.bias"]  # (B, L, 3W)
    q, k, v = qkv.view(2, 17, 3, 2, WIDTH // 2).unbind(2)  # official: view(b, s, 3, n, d)
    att = torch.einsum("bind,bjnd->bnij", q, k) / (WIDTH // 2) ** 0.5
    out = torch.einsum("bnij,bjnd->bind", att.softmax(-1), v).reshape(2, 17, WIDTH)
    expected = out @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
    with torch.no_grad():
        got = tower(encoder.model).encoder.layers[0].self_attn(x)[0]
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_preprocess_constant_image_is_hand_normalised(encoder):
    colour = torch.tensor([-0.5, 0.25, 0.9])
    image = colour.view(1, 3, 1, 1).expand(1, 3, 50, 80).clone()  # non-square: squashed, not cropped
    got = encoder.preprocess(image)
    expected = [((c * 0.5 + 0.5) - m) / s for c, m, s in zip(colour.tolist(), CLIP_MEAN, CLIP_STD)]
    assert got.shape == (1, 3, SIZE, SIZE)
    for ch in range(3):
        assert torch.allclose(got[0, ch], torch.full((SIZE, SIZE), expected[ch]), atol=1e-5)


def test_preprocess_is_bicubic_with_half_pixel_centres(encoder):
    row = torch.tensor([0.0, 0.4, -0.2, 0.8, -0.6, 0.3, 0.1, -0.9, 0.5, 0.2, -0.1, 0.7, -0.4, 0.6, 0.0, -0.3])
    image = row.view(1, 1, 1, 16).expand(1, 3, 16, 16).clone()  # varies along width only
    got = encoder.preprocess(image)
    # output column 9 of a 2x upsample samples x = (9 + 0.5) / 2 - 0.5 = 4.25: Keys cubic, a = -0.75
    a = -0.75

    def w(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a

    value = sum(w(4.25 - i) * row[i].item() for i in (3, 4, 5, 6))
    expected = ((value * 0.5 + 0.5) - CLIP_MEAN[0]) / CLIP_STD[0]
    assert got[0, 0, 5, 9].item() == pytest.approx(expected, abs=1e-5)


def test_encode_matches_independent_transformers_penultimate_tokens(official, encoder):
    state, _ = official
    images = torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = encoder.encode(images)
    model = independent_model(state)
    pixels = F.interpolate(images, size=(SIZE, SIZE), mode="bicubic", align_corners=False) * 0.5 + 0.5
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        last = model(pixel_values=pixels).last_hidden_state
    assert got.shape == (2, 17, WIDTH)
    assert (got - hidden[LAYERS - 1]).abs().max() <= 1e-5 * got.abs().max()
    assert (got - hidden[LAYERS]).abs().max() > 1e-2  # not the last block
    assert (got - last).abs().max() > 1e-2


def test_safetensors_visual_only_file_loads_too(tmp_path, official, encoder):
    state, _ = official
    visual = {k: v.contiguous() for k, v in state.items() if k.startswith("visual.")}
    save_file(visual, tmp_path / "clip.safetensors")
    other = ImageEncoder.from_checkpoint(tmp_path / "clip.safetensors", dtype=torch.float32)
    images = torch.zeros(1, 3, 32, 32)
    assert torch.equal(other.encode(images), encoder.encode(images))


def test_bad_images_and_wrong_checkpoint_are_refused(tmp_path, encoder):
    with pytest.raises(ModelInputError, match=r"\(B, 3, H, W\).*got \(3, 32, 32\)"):
        encoder.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ModelInputError, match="x / 127.5 - 1"):
        encoder.encode(torch.full((1, 3, 32, 32), 255.0))
    umt5 = {"token_embedding.weight": torch.zeros(10, 8), "blocks.0.pos_embedding.embedding.weight": torch.zeros(32, 2)}
    path = tmp_path / "t5.pth"
    torch.save(umt5, path)
    with pytest.raises(ModelLoadError, match=r"t5\.pth.*ViT-H/14.*looks like a umT5 text encoder"):
        ImageEncoder.from_checkpoint(path)
