"""The pipeline of Krea Realtime: the Wan pipeline's steps, with denoise run block-causally when
``[sampler].solver = "krea-causal"``.

Text encoding, the kept source video, decode and save are the Wan pipeline's. Only the denoise
node changes: the block loop (``denoise_causal``) re-anchors its context on a VAE-encoded frame
of the decoded video, so that step reads the VAE, and the VAE's file joins its weights (and its
key). With any other solver (DiffSynth's bidirectional configuration) the steps are the Wan
pipeline's, unchanged. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.families.krea import CAUSAL_SOLVER
from wanflow.steps.denoise_causal import CausalDenoise
from wanflow.steps.pipeline import WanPipeline


@attrs.frozen
class KreaPipeline(WanPipeline):
    """``WanPipeline`` with the block-causal denoise step for the ``krea-causal`` solver."""

    def steps(self, resolved: Any) -> list[StepSpec]:
        nodes = super().steps(resolved)
        if resolved.values["sampler.solver"] != CAUSAL_SOLVER or resolved.recipe.train is not None:
            return nodes
        decode = next(n for n in nodes if n.name == "decode")
        return [causal_node(n, decode) if n.name == "denoise" else n for n in nodes]


def causal_node(denoise: StepSpec, decode: StepSpec) -> StepSpec:
    """The denoise node with the block-causal step: the same inputs and DiT weights, plus the VAE
    (``decode``'s file, dtype and device) that the re-anchor decodes and encodes with."""
    step = CausalDenoise.replacing(denoise.step, decode.step)
    return attrs.evolve(denoise, step=step, weights={**denoise.weights, "vae": decode.weights["vae"]})
