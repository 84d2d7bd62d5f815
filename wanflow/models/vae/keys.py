"""Key tables between the official Wan VAE checkpoints and diffusers' `AutoencoderKLWan` layout.

A conversion is a list of stages; each stage is an ordered (regex, replacement) table applied
with `rename_keys` semantics (first full match wins, other keys unchanged). Stage 1 maps block
paths (which depend on `num_res_blocks` in Wan2.1's flat decoder), stage 2 the names inside a
residual block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from wanflow.models.loading import rename_keys
from wanflow.models.vae.config import VAEConfig

T = TypeVar("T")
Table = list[tuple[str, str]]

#: Names inside a residual block: official `residual.N` / `shortcut` <-> diffusers.
_INNER: list[tuple[str, str]] = [
    (".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut."),
]


def _shared_prefixes() -> list[tuple[str, str]]:
    """Paths the two versions share: conv1/conv2, the stems, middles and heads."""
    pairs = [("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv1.", f"{part}.conv_in."), (f"{part}.head.0.", f"{part}.norm_out."),
            (f"{part}.head.2.", f"{part}.conv_out."),
            (f"{part}.middle.0.", f"{part}.mid_block.resnets.0."),
            (f"{part}.middle.1.", f"{part}.mid_block.attentions.0."),
            (f"{part}.middle.2.", f"{part}.mid_block.resnets.1."),
        ]
    return pairs


def _block_prefixes(cfg: VAEConfig) -> list[tuple[str, str]]:
    """Per-block path pairs (official, diffusers) for this configuration."""
    return (_wan21_blocks if cfg.version == "wan2.1" else _wan22_blocks)(cfg.num_res_blocks, len(cfg.dim_mult))


def _wan21_blocks(n: int, levels: int) -> list[tuple[str, str]]:
    """Encoder lists are flat in both layouts; diffusers groups the flat decoder list by level."""
    enc, dec = "encoder.downsamples", "decoder.upsamples"
    pairs = [(f"{enc}.{i}.", f"encoder.down_blocks.{i}.") for i in range(levels * (n + 1))]
    for level in range(levels):
        base, up = level * (n + 2), f"decoder.up_blocks.{level}"
        pairs += [(f"{dec}.{base + j}.", f"{up}.resnets.{j}.") for j in range(n + 1)]
        pairs.append((f"{dec}.{base + n + 1}.", f"{up}.upsamplers.0."))
    return pairs


def _wan22_blocks(n: int, levels: int) -> list[tuple[str, str]]:
    """Nested blocks: residual blocks then the resampler, in both directions."""
    pairs: list[tuple[str, str]] = []
    for level in range(levels):
        enc, down = f"encoder.downsamples.{level}.downsamples", f"encoder.down_blocks.{level}"
        dec, up = f"decoder.upsamples.{level}.upsamples", f"decoder.up_blocks.{level}"
        pairs += [(f"{enc}.{j}.", f"{down}.resnets.{j}.") for j in range(n)]
        pairs += [(f"{enc}.{n}.", f"{down}.downsampler.")]
        pairs += [(f"{dec}.{j}.", f"{up}.resnets.{j}.") for j in range(n + 1)]
        pairs += [(f"{dec}.{n + 1}.", f"{up}.upsampler.")]
    return pairs


def _prefix_table(pairs: list[tuple[str, str]], to_diffusers: bool) -> Table:
    """Rules replacing a key's leading path."""
    rules = [(a, b) if to_diffusers else (b, a) for a, b in pairs]
    return [(re.escape(old) + "(.*)", new + r"\1") for old, new in rules]


def _inner_table(to_diffusers: bool) -> Table:
    """Rules replacing one name inside a residual block."""
    rules = [(a, b) if to_diffusers else (b, a) for a, b in _INNER]
    return [("(.*)" + re.escape(old) + "(.*)", r"\1" + new + r"\2") for old, new in rules]


def official_to_diffusers(cfg: VAEConfig) -> list[Table]:
    """Stages turning official keys into diffusers `AutoencoderKLWan` keys."""
    return [_prefix_table(_shared_prefixes() + _block_prefixes(cfg), True), _inner_table(True)]


def diffusers_to_official(cfg: VAEConfig) -> list[Table]:
    """Stages turning diffusers `AutoencoderKLWan` keys into official keys."""
    return [_inner_table(False), _prefix_table(_shared_prefixes() + _block_prefixes(cfg), False)]


def apply_stages(state: Mapping[str, T], stages: list[Table]) -> dict[str, T]:
    """Rename every key through each stage in turn."""
    out = dict(state)
    for table in stages:
        out = rename_keys(out, table)
    return out
