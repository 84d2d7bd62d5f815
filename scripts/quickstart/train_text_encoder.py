"""Train the quickstart's tiny umT5 encoder so its token features name colour, shape and motion.

    python -m scripts.quickstart.train_text_encoder OUT.safetensors [--seed 0] [--steps 1000]

The network is the one wanflow runs (transformers' ``UMT5EncoderModel`` built by
``wanflow.models.text_encoder.build_model`` from the official-layout state of
``scripts/make_tiny_weights.umt5_state``), reading ByT5 bytes. Its own loss: three linear
heads (colour 6, shape 3, motion 4) classify each caption from the mean of its real tokens'
final features, and, at half weight, from every real token on its own, so that whichever token
the DiT's cross-attention reads carries the whole combination. The heads are thrown away.

Captions are every wording ``scripts/shapes/captions`` can give the training split's
combinations (every word of the vocabulary occurs there), some capitalised or ending in a full
stop. The check: the held-out combinations' captions, encoded exactly as wanflow encodes a
prompt (cleaned, padded to 512, through the loader), must all be classified right.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scripts.make_tiny_weights import TEXT_DIM, umt5_state
from scripts.quickstart.files import save_weights, seed_everything
from scripts.shapes.captions import MOTION_PHRASES, SHAPE_WORDS, TEMPLATES
from scripts.shapes.vocabulary import (
    COLOURS,
    HELD_OUT,
    MOTIONS,
    SHAPES,
    Combo,
    training_combos,
)
from wanflow.models.loading import rename_keys
from wanflow.models.text_encoder import (
    UMT5_KEY_TABLE,
    TextEncoder,
    build_model,
    clean_prompt,
    load_tokenizer,
)

TOKENIZER = Path(__file__).resolve().parents[2] / "wanflow" / "assets" / "wanflow-tiny" / "tokenizer"
CLASSES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": MOTIONS}


@attrs.frozen
class TextTraining:
    """How the encoder is trained; defaults are what ships."""

    steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    warmup: int = 30
    token_weight: float = 0.5  # weight of the per-token classification beside the mean-pooled one


def captions_of(combo: Combo) -> list[str]:
    """Every wording of a combination: templates x shape synonyms x motion phrases."""
    colour, shape, motion = combo
    return [t.format(colour=colour, shape=s, motion=m)
            for t, s, m in itertools.product(TEMPLATES, SHAPE_WORDS[shape], MOTION_PHRASES[motion])]


def labelled(combos: Sequence[Combo]) -> list[tuple[str, Combo]]:
    """(caption, combination) for every wording of every combination."""
    return [(text, combo) for combo in combos for text in captions_of(combo)]


def training_captions() -> list[tuple[str, Combo]]:
    """What the encoder learns from: every wording of the training split's combinations only."""
    return labelled(training_combos())


def varied(text: str, rng: np.random.Generator) -> str:
    """A caption as people type it: sometimes capitalised, sometimes with a full stop."""
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.25 else text


def label_tensor(combos: Sequence[Combo]) -> dict[str, Tensor]:
    """Class indices per attribute, (B,) each."""
    return {a: torch.tensor([CLASSES[a].index(c[i]) for c in combos]) for i, a in enumerate(CLASSES)}


class Heads(nn.Module):
    """One linear classifier per attribute over a TEXT_DIM feature (training only)."""

    def __init__(self, width: int = TEXT_DIM):
        super().__init__()
        self.heads = nn.ModuleDict({a: nn.Linear(width, len(c)) for a, c in CLASSES.items()})

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {a: head(features) for a, head in self.heads.items()}


def pooled(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over each caption's real tokens: (B, L, D), (B, L) -> (B, D)."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def features(model, tokenizer, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Final features (B, L, D) and mask (B, L), padded to the longest caption only: with the
    attention mask and relative positions, real tokens come out as with wanflow's 512 padding."""
    batch = tokenizer([clean_prompt(t) for t in texts], padding="longest", return_tensors="pt")
    mask = batch["attention_mask"]
    return model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask


def losses(hidden: Tensor, mask: Tensor, heads: Heads, labels: dict[str, Tensor],
           token_weight: float) -> Tensor:
    """Cross-entropy of the mean-pooled features plus ``token_weight`` x that of each real token."""
    loss = sum(F.cross_entropy(logits, labels[a]) for a, logits in heads(pooled(hidden, mask)).items())
    real = mask.bool()
    per_token = heads(hidden[real])  # (N real tokens, classes)
    counts = mask.sum(1)
    for a, logits in per_token.items():
        loss = loss + token_weight * F.cross_entropy(logits, labels[a].repeat_interleave(counts))
    return loss


def learning_rate(step: int, settings: TextTraining) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    done = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * done))


def initial_state(seed: int) -> dict[str, Tensor]:
    """The tiny umT5's official-layout tensors, drawn as T5 initialises them (Raffel et al. 2020,
    no 1/sqrt(d) in attention, so queries are drawn small): unit embeddings, norms at one, every
    projection scaled by the inverse square root of its fan-in."""
    shapes = {k: v.shape for k, v in umt5_state(seed).items()}  # the layout make_tiny_weights writes
    d, inner = shapes["token_embedding.weight"][1], shapes["blocks.0.attn.q.weight"][0]
    heads = shapes["blocks.0.pos_embedding.embedding.weight"][1]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith(("norm1.weight", "norm2.weight")) or key == "norm.weight":
            out[key] = torch.ones(shape)
            continue
        std = (1.0 if key == "token_embedding.weight"
               else (d * inner // heads) ** -0.5 if key.endswith("attn.q.weight")
               else shape[1] ** -0.5 if key.endswith(".weight") and "pos_embedding" not in key
               else 1.0)
        out[key] = torch.randn(shape, generator=g) * std
    return out


def initial_model(seed: int):
    """The tiny umT5 from ``initial_state``, built by wanflow's own loader, in fp32 and trainable."""
    model = build_model(initial_state(seed), source="initial tiny umT5", dtype=torch.float32)
    return model.train().requires_grad_(True)


def train(seed: int, settings: TextTraining = TextTraining(), log_every: int = 100):
    """Encoder and heads trained on the training split's captions; returns (model, heads, losses)."""
    generator = seed_everything(seed)
    model, heads = initial_model(seed), Heads()
    tokenizer = load_tokenizer(TOKENIZER)
    data = training_captions()
    params = list(model.parameters()) + list(heads.parameters())
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    history, start = [], time.perf_counter()
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, settings)
        rng = np.random.default_rng([seed, step])
        picks = torch.randint(len(data), (settings.batch,), generator=generator).tolist()
        texts = [varied(data[i][0], rng) for i in picks]
        hidden, mask = features(model, tokenizer, texts)
        loss = losses(hidden, mask, heads, label_tensor([data[i][1] for i in picks]), settings.token_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        history.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            _say(f"text encoder step {step + 1}/{settings.steps}: loss {history[-1]:.4f} "
                 f"({time.perf_counter() - start:.0f} s)")
    return model.eval().requires_grad_(False), heads.eval(), history


def official_state(model) -> dict[str, Tensor]:
    """The trained weights under the official umT5 keys (the inverse of the loader's key table)."""
    ours = model.state_dict()
    names = rename_keys({k: k for k in umt5_state(0)}, UMT5_KEY_TABLE)  # transformers key -> official
    return {official: ours[theirs] for theirs, official in names.items()}


@attrs.frozen
class TextReport:
    """Held-out captions classified from wanflow's own encoding of them."""

    captions: int
    accuracy: dict[str, float]  # from the mean over real tokens
    token_accuracy: dict[str, float]  # from each real token alone
    feature_rms: float  # RMS of the real tokens' features

    def lines(self) -> list[str]:
        def fmt(acc):
            return ", ".join(f"{a} {v:.3f}" for a, v in acc.items())

        return [(f"text encoder on {self.captions} held-out captions: {fmt(self.accuracy)} "
                 f"(single tokens: {fmt(self.token_accuracy)}); feature RMS {self.feature_rms:.2f}")]


@torch.no_grad()
def evaluate(encoder: TextEncoder, heads: Heads, combos: Sequence[Combo] = HELD_OUT) -> TextReport:
    """Classify every wording of ``combos`` (plain, capitalised with a full stop) as wanflow encodes it."""
    data = labelled(combos)
    data += [(t[0].upper() + t[1:] + ".", c) for t, c in data]
    labels = label_tensor([c for _, c in data])
    encoding = encoder.encode([t for t, _ in data])
    mask = (torch.arange(encoding.embeddings.shape[1])[None] < encoding.lengths[:, None]).long()
    hidden = encoding.embeddings.float()
    mean_logits, token_logits = heads(pooled(hidden, mask)), heads(hidden[mask.bool()])
    token_labels = {a: v.repeat_interleave(encoding.lengths) for a, v in labels.items()}
    return TextReport(
        len(data), {a: float((l.argmax(1) == labels[a]).float().mean()) for a, l in mean_logits.items()},
        {a: float((l.argmax(1) == token_labels[a]).float().mean()) for a, l in token_logits.items()},
        float(hidden[mask.bool()].pow(2).mean().sqrt()))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the safetensors file to write "
                                           "(e.g. FAMILY/text_encoder/models_t5_umt5-xxl-enc-bf16.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=attrs.fields(TextTraining).steps.default)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, heads, _ = train(args.seed, attrs.evolve(TextTraining(), steps=args.steps))
    save_weights(official_state(model), args.out)
    encoder = TextEncoder.from_checkpoint(args.out, TOKENIZER, dtype=torch.float32)
    for line in evaluate(encoder, heads).lines():
        _say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
