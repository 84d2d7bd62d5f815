"""The conditioning latents of LongCat-Video: the VAE posterior's sample (the authors') or its mean.

The authors' pipeline encodes every frame it holds clean (a continuation's frames, the i2v image,
the refinement's upscaled clip and its conditioning frames) with ``retrieve_latents(vae.encode(x),
generator)``: diffusers' ``DiagonalGaussianDistribution.sample``, ``mean + std · ε`` with
``std = exp(0.5 · clamp(logvar, −30, 20))`` and ε standard normal of the mean's shape, then
normalised per channel. DiffSynth encodes the mean. ``[inputs].longcat_cond_latents`` picks one;
unset, it follows the solver: the authors' solvers sample, DiffSynth's ``euler`` takes the mean,
and training always encodes the mean (DiffSynth's trainer does; the rules refuse "sample" there).

ε is never drawn from the global random state (the authors' refinement draws its sample so) nor
from the denoise noise's stream (theirs continues the generator that drew the noise, which a step
keyed on its own inputs cannot share): each encode node draws it from a CPU ``torch.Generator``
seeded with ``posterior_seed([sampler].seed, node name)``, in fp32, so a run is bit-reproducible
on any device and two encodes of one run never share ε.

Keys: a sampling node reads ``[sampler].seed`` and holds ``posterior = "sample"`` and its stream
in its configuration; a mean node holds neither (``KEYED_WHEN_SET``): the mean is what these
steps computed before the setting existed, so their cached results stay valid and a new seed
reuses them. Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from wanflow.engine.step import KEYED_WHEN_SET, StepSpec
from wanflow.families.longcat import AUTHORS_SOLVERS
from wanflow.steps.conditioning import encode

#: The step kinds that encode frames held clean: every one takes the run's posterior setting.
KINDS = ("encode-longcat-frames", "encode-longcat-image", "encode-longcat-segment", "encode-longcat-refine",
         "encode-longcat-refine-cond")
#: What a sampling encode reads beyond its own settings.
SEED_READ = "sampler.seed"


def posterior_field() -> Any:
    """The ``posterior`` field of an encode step: "mean" keeps the keys made before it existed."""
    return attrs.field(default="mean", metadata=KEYED_WHEN_SET)


def stream_field() -> Any:
    """The ``stream`` field of an encode step: the node whose ε it draws (set only when sampling)."""
    return attrs.field(default="", metadata=KEYED_WHEN_SET)


def posterior_mode(values: Mapping[str, Any], training: bool) -> str:
    """"sample" or "mean": ``[inputs].longcat_cond_latents``, else the solver's (the authors'
    solvers sample, others take the mean); training takes the mean."""
    chosen = values.get("inputs.longcat_cond_latents")
    if training:
        return "mean"
    if chosen is not None:
        return str(chosen)
    return "sample" if values["sampler.solver"] in AUTHORS_SOLVERS else "mean"


def posterior_seed(seed: int, stream: str) -> int:
    """The seed of one encode's ε: the first 8 bytes of sha256("longcat-posterior:{seed}:{stream}"),
    big-endian, below 2**63 (any int64 a generator takes); independent of the noise's seed + k."""
    digest = hashlib.sha256(f"longcat-posterior:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def encode_latents(step: Any, ctx: Any, pixels: Any) -> Any:
    """(1, z, T, h, w) fp32 latents of ``pixels`` as ``step.posterior`` asks: the posterior mean,
    or its sample with ε from ``posterior_seed([sampler].seed, step.stream)``."""
    if step.posterior == "mean":
        return encode(step, ctx, pixels)
    import torch

    generator = torch.Generator(device="cpu").manual_seed(posterior_seed(ctx.params[SEED_READ], step.stream))
    return encode(step, ctx, pixels, generator=generator)


def with_posterior(nodes: Sequence[StepSpec], mode: str) -> list[StepSpec]:
    """The plan's nodes with each encode of held frames set to ``mode``: under "sample" each draws
    its own stream (its node name) and reads the seed; under "mean" they are left as built."""
    if mode == "mean":
        return list(nodes)
    out = []
    for n in nodes:
        if getattr(n.step, "kind", None) in KINDS:
            step = attrs.evolve(n.step, posterior="sample", stream=n.name)
            n = attrs.evolve(n, step=step, reads=(*n.params_read, SEED_READ))
        out.append(n)
    return out
