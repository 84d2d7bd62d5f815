"""umT5 text encoder: key table, numerics against independent references, official zero padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models.text_encoder import (
    TEXT_LEN,
    UMT5_XXL,
    TextEncoder,
    clean_prompt,
    settings_from_state,
    to_transformers_keys,
)

from ._checkpoints import make_tokenizer_dir, umt5_official_state

HEADS, LAYERS = 4, 2
PROMPTS = ["A cat sits on a red sofa.", "Two people walk along the beach at sunset, the quick fox."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("umt5") / "google" / "umt5-xxl")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    state = umt5_official_state(heads=HEADS, layers=LAYERS)
    path = tmp_path_factory.mktemp("ckpt") / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(state, path)
    return state, path


@pytest.fixture(scope="module")
def fp32_encoder(official, tokenizer_dir):
    return TextEncoder.from_checkpoint(official[1], tokenizer_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def fp32_encoding(fp32_encoder):
    return fp32_encoder.encode(PROMPTS)


def independent_keys(state):
    """The §2.4 mapping written out by hand, independent of the module's key table."""
    out = {"shared.weight": state["token_embedding.weight"],
           "encoder.embed_tokens.weight": state["token_embedding.weight"],
           "encoder.final_layer_norm.weight": state["norm.weight"]}
    for i in range(LAYERS):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        out[a + "layer_norm.weight"] = state[f"blocks.{i}.norm1.weight"]
        for n in "qkvo":
            out[a + f"SelfAttention.{n}.weight"] = state[f"blocks.{i}.attn.{n}.weight"]
        out[a + "SelfAttention.relative_attention_bias.weight"] = state[f"blocks.{i}.pos_embedding.embedding.weight"]
        out[f + "layer_norm.weight"] = state[f"blocks.{i}.norm2.weight"]
        out[f + "DenseReluDense.wi_0.weight"] = state[f"blocks.{i}.ffn.gate.0.weight"]
        out[f + "DenseReluDense.wi_1.weight"] = state[f"blocks.{i}.ffn.fc1.weight"]
        out[f + "DenseReluDense.wo.weight"] = state[f"blocks.{i}.ffn.fc2.weight"]
    return out


def t5_bucket(rel: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """The T5 bidirectional bucket formula, from the paper's description."""
    half = num_buckets // 2
    offset = half if rel > 0 else 0
    n, exact = abs(rel), half // 2
    if n < exact:
        return offset + n
    big = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    return offset + min(big, half - 1)


def reference_forward(state, ids, mask, eps=1e-6):
    """umT5 encoder from the official formulas: RMSNorm, unscaled attention + per-layer bias."""
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    B, L = ids.shape
    x = state["token_embedding.weight"][ids]  # (B, L, D)
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    table = torch.tensor([t5_bucket(r) for r in range(-L + 1, L)])  # bucket of rel at rel + L - 1
    buckets = table[rel + L - 1]  # (L, L)
    blocked = (mask[:, None, None, :] == 0) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = rms(x, state[p + "norm1.weight"])
        q, k, v = (
            (h @ state[p + f"attn.{n}.weight"].T).view(B, L, HEADS, -1) for n in "qkv"
        )  # (B, L, H, C)
        bias = state[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # (H, L, L)
        att = torch.einsum("bihc,bjhc->bhij", q, k) + bias + blocked
        out = torch.einsum("bhij,bjhc->bihc", att.softmax(-1), v).reshape(B, L, -1)
        x = x + out @ state[p + "attn.o.weight"].T
        h = rms(x, state[p + "norm2.weight"])
        gate = F.gelu(h @ state[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + (gate * (h @ state[p + "ffn.fc1.weight"].T)) @ state[p + "ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


def test_key_table_maps_every_official_key_and_matches_transformers_names(official):
    state, _ = official
    converted = to_transformers_keys(state)
    model = UMT5EncoderModel(settings_from_state(state).to_transformers())
    assert set(converted) == set(model.state_dict())
    assert not set(converted) & set(state), "an official key was left unrenamed"
    assert len(converted) == len(state) + 1  # token_embedding feeds two names
    expected = independent_keys(state)
    assert all(converted[k] is expected[k] for k in expected)


def test_settings_read_from_shapes(official):
    s = settings_from_state(official[0])
    assert (s.vocab_size, s.d_model, s.num_heads, s.d_kv, s.d_ff, s.num_layers) == (80, 64, 4, 16, 96, 2)
    assert (UMT5_XXL.d_model, UMT5_XXL.num_heads * UMT5_XXL.d_kv, UMT5_XXL.vocab_size) == (4096, 4096, 256384)


def test_encode_matches_transformers_and_hand_reference_with_exact_zero_padding(
    official, fp32_encoder, fp32_encoding
):
    state, encoder, got = official[0], fp32_encoder, fp32_encoding
    ids, mask = encoder.tokenize(PROMPTS)
    assert got.embeddings.shape == (2, TEXT_LEN, 64) and got.embeddings.dtype == torch.float32

    sentencepiece_lengths = [len(encoder.tokenizer(clean_prompt(p))["input_ids"]) for p in PROMPTS]
    assert got.lengths.tolist() == sentencepiece_lengths and sentencepiece_lengths[0] != sentencepiece_lengths[1]

    config = UMT5Config(vocab_size=80, d_model=64, d_kv=16, num_heads=HEADS, d_ff=96, num_layers=LAYERS,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)
    hf = UMT5EncoderModel(config).eval()
    hf.load_state_dict(independent_keys(state), strict=True)
    with torch.no_grad():
        expected_hf = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    expected_hand = reference_forward(state, ids, mask)
    for b, n in enumerate(got.lengths.tolist()):
        real = got.embeddings[b, :n]
        scale = real.abs().max()
        assert (real - expected_hf[b, :n]).abs().max() <= 1e-5 * scale
        assert (real - expected_hand[b, :n]).abs().max() <= 1e-5 * scale
        assert torch.all(got.embeddings[b, n:] == 0) and torch.all(real.abs().sum(-1) > 0)


def test_bf16_compute_stays_close_to_fp32(official, tokenizer_dir, fp32_encoding):
    fp32 = fp32_encoding
    bf16 = TextEncoder.from_checkpoint(official[1], tokenizer_dir, dtype=torch.bfloat16)
    assert bf16.model.shared.weight.dtype == torch.bfloat16
    assert bf16.model.shared.weight.data_ptr() == bf16.model.encoder.embed_tokens.weight.data_ptr()
    out = bf16.encode(PROMPTS[:1])
    n = int(out.lengths[0])
    cosine = F.cosine_similarity(out.embeddings[0, :n].float(), fp32.embeddings[0, :n], dim=-1)
    assert out.embeddings.dtype == torch.bfloat16 and cosine.min() > 0.98  # random weights: sharp softmax
    assert torch.all(out.embeddings[0, n:] == 0)


def test_transformers_layout_file_gives_the_same_encoding(tmp_path, official, tokenizer_dir, fp32_encoding):
    converted = {k: v for k, v in independent_keys(official[0]).items() if k != "encoder.embed_tokens.weight"}
    save_file(converted, tmp_path / "model.safetensors")  # as transformers saves it: the tie stored once
    other = TextEncoder.from_checkpoint(tmp_path / "model.safetensors", tokenizer_dir, dtype=torch.float32)
    assert torch.equal(other.encode(PROMPTS).embeddings, fp32_encoding.embeddings)


def test_long_prompt_is_truncated_to_512_tokens(fp32_encoder):
    out = fp32_encoder.encode(["the quick brown fox " * 300])
    assert out.lengths.tolist() == [TEXT_LEN] and torch.all(out.embeddings[0].abs().sum(-1) > 0)


@pytest.mark.parametrize("rel", [0, 1, -1, 7, -7, 8, -8, 12, -20, -32, 64, 127, 128, -200, 500])
def test_relative_position_buckets_follow_the_t5_formula(rel):
    hand = {0: 0, 1: 17, -1: 1, 7: 23, -7: 7, 8: 24, -8: 8, 12: 25, -20: 10, -32: 12,
            64: 30, 127: 31, 128: 31, -200: 15, 500: 31}  # computed by hand: 16 + 8 + floor(8 log(n/8)/log 16)
    assert t5_bucket(rel) == hand[rel]
    layer = UMT5EncoderModel(xxl_bias_config()).encoder.block[1].layer[0].SelfAttention
    with torch.no_grad():
        layer.relative_attention_bias.weight.copy_(torch.arange(32.0)[:, None].expand(32, 2))
    length = abs(rel) + 1
    bias = layer.compute_bias(length, length)  # (1, H, Lq, Lk), value = bucket of k - q
    q, k = (0, rel) if rel >= 0 else (-rel, 0)
    assert bias[0, 1, q, k].item() == hand[rel]


def xxl_bias_config() -> UMT5Config:
    """A tiny model with the XXL relative-position constants (32 buckets, distance 128)."""
    return UMT5Config(vocab_size=8, d_model=8, d_kv=4, num_heads=2, d_ff=8, num_layers=2,
                      relative_attention_num_buckets=UMT5_XXL.num_buckets,
                      relative_attention_max_distance=UMT5_XXL.max_distance,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a   dog \n\t runs  ", "a dog runs"),
        ("salt &amp;amp; pepper", "salt & pepper"),
        ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
        ("cafÃ©  au lait", "café au lait"),
        ("He said \u201chi\u201d", 'He said "hi"'),
    ],
)
def test_clean_prompt_as_the_official_wrapper(raw, clean):
    assert clean_prompt(raw) == clean


def test_wrong_checkpoint_is_refused_naming_what_it_is(tmp_path, tokenizer_dir):
    vae = {"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
           "decoder.conv1.weight": torch.zeros(8, 16, 3, 3, 3)}
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(vae, path)
    with pytest.raises(ModelLoadError, match=r"Wan2\.1_VAE\.pth.*umT5.*looks like a Wan2\.1 VAE \(z_dim 16"):
        TextEncoder.from_checkpoint(path, tokenizer_dir)


def test_missing_tokenizer_and_mismatched_vocab_are_refused(tmp_path, official, tokenizer_dir):
    with pytest.raises(ModelLoadError, match="no tokenizer folder"):
        TextEncoder.from_checkpoint(official[1], tmp_path / "nope")
    small = tmp_path / "small.pth"
    torch.save(umt5_official_state(vocab=40, heads=HEADS, layers=LAYERS), small)
    with pytest.raises(ModelLoadError, match="tokenizer has 64 tokens .* embeds only 40"):
        TextEncoder.from_checkpoint(small, tokenizer_dir)


def test_a_bare_string_is_not_a_prompt_list(fp32_encoder):
    with pytest.raises(ModelInputError, match="list of strings"):
        fp32_encoder.encode("a cat")
