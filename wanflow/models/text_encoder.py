"""The umT5-XXL text encoder that conditions every Wan model.

The network is transformers' ``UMT5EncoderModel`` (umT5 has a relative position bias in every
layer; classic T5 shares layer 0's, so ``T5EncoderModel`` would be wrong). The official
``models_t5_umt5-xxl-enc-bf16.pth`` is loaded through a plain key table. Encoding reproduces the
official pipeline: clean the prompt, pad/truncate to 512 tokens, run with the attention mask, and
hand the DiT the 512 positions with everything past each prompt's real length set to zero.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import ftfy
import structlog
import torch
from torch import Tensor
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models.checkpoint_files import Checkpoint, open_weights
from wanflow.models.loading import build_on_meta, load_state_into, rename_keys
from wanflow.models.precision import adopt
from wanflow.models.signature import identify

log = structlog.get_logger(__name__)

#: Tokens per prompt: the official pipeline pads and truncates to this, and the DiT expects it.
TEXT_LEN = 512

#: Official key -> transformers key, applied by `rename_keys` (a pure 1:1 rename, no reshapes).
#: `token_embedding` feeds both `shared.weight` and `encoder.embed_tokens.weight` (tied).
UMT5_KEY_TABLE: tuple[tuple[str, str], ...] = (
    (r"token_embedding\.weight", r"shared.weight"),
    (r"blocks\.(\d+)\.norm1\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"blocks\.(\d+)\.norm2\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"blocks\.(\d+)\.ffn\.gate\.0\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"blocks\.(\d+)\.ffn\.fc1\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"blocks\.(\d+)\.ffn\.fc2\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"norm\.weight", r"encoder.final_layer_norm.weight"),
)


@attrs.frozen
class UMT5Settings:
    """Architecture of a umT5 encoder; the released size is `UMT5_XXL`."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    num_buckets: int = 32  # relative-position buckets, bidirectional (16 each way)
    max_distance: int = 128  # relative distances beyond this share the last bucket
    eps: float = 1e-6  # RMSNorm epsilon of the official T5LayerNorm

    def to_transformers(self) -> UMT5Config:
        """The equivalent transformers config (gated tanh-GELU, i.e. `gated-gelu`)."""
        return UMT5Config(
            vocab_size=self.vocab_size, d_model=self.d_model, d_kv=self.d_kv,
            num_heads=self.num_heads, d_ff=self.d_ff, num_layers=self.num_layers,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance, layer_norm_epsilon=self.eps,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
            use_cache=False, tie_word_embeddings=False,
        )


#: The umT5-XXL encoder of every Wan release (official `umt5_xxl`).
UMT5_XXL = UMT5Settings(
    vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24
)


def settings_from_state(state: Mapping[str, Tensor]) -> UMT5Settings:
    """Read the architecture off an official state dict's shapes (any size, tiny ones included)."""
    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return UMT5Settings(
        vocab_size=vocab, d_model=d_model, d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
        num_heads=heads, d_ff=state["blocks.0.ffn.fc1.weight"].shape[0], num_layers=layers,
        num_buckets=buckets,
    )


def to_transformers_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official umT5 keys -> `UMT5EncoderModel` keys, with the tied input embedding added."""
    out = rename_keys(state, UMT5_KEY_TABLE)
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def clean_prompt(text: str) -> str:
    """As the official tokenizer wrapper: fix mojibake, unescape HTML twice, collapse spaces."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


@attrs.frozen
class TextEncoding:
    """Prompt embeddings as the DiT takes them, and each prompt's real token count."""

    embeddings: Tensor  # (B, 512, D); zero beyond each prompt's length
    lengths: Tensor  # (B,) int64, tokens including the closing </s>


class TextEncoder:
    """umT5 encoder + tokenizer, producing the official zero-padded (B, 512, D) embeddings."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, *, text_len: int = TEXT_LEN):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, tokenizer_dir: str | os.PathLike, *,
        dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
    ) -> TextEncoder:
        """The official `.pth` (or a converted safetensors, or its state dict) and the
        `google/umt5-xxl` tokenizer."""
        opened = open_weights(checkpoint)
        model = build_model(opened.state, source=opened.source, dtype=dtype, device=device,
                            borrowed=opened.borrowed)
        tokenizer = load_tokenizer(tokenizer_dir)
        _check_vocab(tokenizer, model.config.vocab_size, tokenizer_dir, opened.source)
        return cls(model, tokenizer)

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Cleaned prompts -> (ids, mask), both (B, 512), right-padded and truncated."""
        if isinstance(prompts, str) or not prompts:
            raise ModelInputError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
            max_length=self.text_len, add_special_tokens=True, return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Prompts -> (B, 512, D) embeddings, exactly zero past each prompt's real tokens."""
        ids, mask = self.tokenize(prompts)
        device = self.model.shared.weight.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        hidden = hidden.masked_fill(mask[..., None] == 0, 0.0)
        return TextEncoding(embeddings=hidden, lengths=mask.sum(dim=1).cpu())


def build_model(
    state: Mapping[str, Tensor], *, source: str, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu", borrowed: bool = True,
) -> UMT5EncoderModel:
    """A `UMT5EncoderModel` shaped after the state dict, built on meta and loaded strictly.

    ``borrowed``: the tensors are the caller's, copied into the model (False: read from a file
    by the loader, whose mapped pages may be released).
    """
    found = identify(state)
    if found.kind != "umt5":
        raise ModelLoadError(
            f"{source}: expected a umT5 text encoder checkpoint, but this looks like "
            f"{found.describe()}. Point the text encoder at models_t5_umt5-xxl-enc-bf16.pth."
        )
    if found.layout == "official":
        settings, state = settings_from_state(state), to_transformers_keys(state)
    else:
        settings = _settings_from_transformers_state(found.details, state)
        state = {"encoder.embed_tokens.weight": state["shared.weight"], **state}  # saved once when tied
    model = build_on_meta(lambda: UMT5EncoderModel(settings.to_transformers()))
    name = f"umT5 encoder (d_model {settings.d_model}, {settings.num_layers} layers)"
    load_state_into(model, state, source=source, expected=name, dtype=dtype, device=device,
                    borrowed=borrowed)
    return adopt(model).eval()  # bf16 on a CPU without bf16 kernels: fp32 GEMMs


def _settings_from_transformers_state(details: Mapping, state: Mapping[str, Tensor]) -> UMT5Settings:
    """Settings for a checkpoint already in transformers' names (diffusers' `text_encoder/`)."""
    q = state["encoder.block.0.layer.0.SelfAttention.q.weight"]
    return UMT5Settings(
        vocab_size=details["vocab_size"], d_model=details["d_model"],
        d_kv=q.shape[0] // details["num_heads"], num_heads=details["num_heads"],
        d_ff=details["d_ff"], num_layers=details["num_layers"], num_buckets=details["num_buckets"],
    )


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The checkpoint's own tokenizer folder (`google/umt5-xxl/`) through transformers."""
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ModelLoadError(
            f"{tokenizer_dir}: no tokenizer folder there; it ships with the model as "
            "google/umt5-xxl/ next to models_t5_umt5-xxl-enc-bf16.pth."
        )
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{tokenizer_dir}: not a usable tokenizer folder ({str(err).splitlines()[0][:200]})."
        ) from None


def _check_vocab(tokenizer, vocab_size: int, tokenizer_dir, path) -> None:
    """A tokenizer emitting ids past the embedding table means mismatched files."""
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"{tokenizer_dir}: tokenizer has {len(tokenizer)} tokens but the encoder in {path} "
            f"embeds only {vocab_size}; the tokenizer and the weights do not belong together."
        )
