"""Tiny checkpoints with the official key names and shapes, and a tiny real tokenizer."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

SENTENCES = [
    "A lively puppy running across green grass, documentary style.",
    "A cat sits on a red sofa in the evening light.",
    "Two people walk along the beach at sunset.",
    "Bright tones, overexposed, static, blurred details, subtitles.",
    "The quick brown fox jumps over the lazy dog.",
]


def make_tokenizer_dir(path: Path, vocab_size: int = 64) -> Path:
    """Train a tiny sentencepiece unigram model (T5 ids: pad 0, </s> 1, unk 2) and save it."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(path))
    return path


def umt5_official_state(
    *, vocab: int = 80, d_model: int = 64, heads: int = 4, d_kv: int = 16, d_ff: int = 96,
    layers: int = 2, buckets: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Random umT5 encoder weights under the official `models_t5_umt5-xxl-enc` key names."""
    g = torch.Generator().manual_seed(seed)
    inner = heads * d_kv
    shapes = {"token_embedding.weight": (vocab, d_model), "norm.weight": (d_model,)}
    for i in range(layers):
        p = f"blocks.{i}."
        shapes |= {p + "norm1.weight": (d_model,), p + "norm2.weight": (d_model,)}
        shapes |= {p + f"attn.{n}.weight": (inner, d_model) for n in "qkv"}
        shapes |= {p + "attn.o.weight": (d_model, inner)}
        shapes |= {p + "pos_embedding.embedding.weight": (buckets, heads)}
        shapes |= {p + "ffn.gate.0.weight": (d_ff, d_model), p + "ffn.fc1.weight": (d_ff, d_model)}
        shapes |= {p + "ffn.fc2.weight": (d_model, d_ff)}
    state = {k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}
    for k in state:  # norm weights near 1, as trained models have them
        if "norm" in k:
            state[k] = 1.0 + state[k] * 0.3
    return {k: v.to(dtype) for k, v in state.items()}


def clip_official_state(
    *, width: int = 160, layers: int = 3, patch: int = 8, image_size: int = 32, seed: int = 0,
    with_text: bool = True,
) -> dict[str, Tensor]:
    """Random open-clip XLM-R ViT weights under the official `visual.*` names (+ a text stub)."""
    g = torch.Generator().manual_seed(seed)
    positions = (image_size // patch) ** 2 + 1
    v = "visual."
    shapes = {
        v + "patch_embedding.weight": (width, 3, patch, patch),
        v + "cls_embedding": (1, 1, width), v + "pos_embedding": (1, positions, width),
        v + "pre_norm.weight": (width,), v + "pre_norm.bias": (width,),
        v + "post_norm.weight": (width,), v + "post_norm.bias": (width,), v + "head": (width, 24),
    }
    for i in range(layers):
        p = f"{v}transformer.{i}."
        for norm in ("norm1", "norm2"):
            shapes |= {p + f"{norm}.weight": (width,), p + f"{norm}.bias": (width,)}
        shapes |= {p + "attn.to_qkv.weight": (3 * width, width), p + "attn.to_qkv.bias": (3 * width,)}
        shapes |= {p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,)}
        shapes |= {p + "mlp.0.weight": (4 * width, width), p + "mlp.0.bias": (4 * width,)}
        shapes |= {p + "mlp.2.weight": (width, 4 * width), p + "mlp.2.bias": (width,)}
    if with_text:
        shapes |= {"log_scale": (), "textual.token_embedding.weight": (50, 24)}
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}
    for k in state:
        if "norm" in k and k.endswith("weight"):
            state[k] = 1.0 + state[k]
    return state
