"""One DiT with a job's model call bound in, serving every guidance pass of a denoise segment.

The text and image tokens do not change between steps, so every block's cross-attention keys
and values are projected once per prompt (``prepare_context``), on first use, and shared by the
passes that read that prompt (the guidance pass, cfg_merge's pair, the skip-layer pass): under a
memory plan that streams blocks, each preparation reads every block once more. What the
conditioners contributed (channels, per-token timesteps, DiT extras) is cut to each sliding
window's frames here, whatever the family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.steps.cond_call import ModelCall, tensor


class BoundDit:
    """The DiT, the job's prompts and its model call; ``model_fn`` gives one pass."""

    def __init__(self, dit: Any, texts: Mapping[str, Any], call: ModelCall, device: str):
        self.dit, self.texts, self.device = dit, texts, device
        self.call = call.on(device)
        self._prepared: dict[str, Any] = {}

    def context(self, text: str) -> Any:
        """The prepared context of "pos" or "neg", or of "pair": both joined along the batch
        (DiffSynth's cfg_merge; both are zero-padded to 512 tokens, so they join as they are)."""
        if text not in self._prepared:
            import torch

            if text == "pair":
                from wanflow.models.dit import PreparedContext

                pos, neg = self.context("pos"), self.context("neg")
                self._prepared[text] = PreparedContext(
                    tuple(tuple(torch.cat([a, b]) for a, b in zip(kp, kn, strict=True))
                          for kp, kn in zip(pos.kv, neg.kv, strict=True)), 2 * pos.batch)
            else:
                with torch.no_grad():
                    self._prepared[text] = self.dit.prepare_context(
                        tensor(self.texts[text], "context", text).to(self.device), self.call.tokens)
        return self._prepared[text]

    def model_fn(self, text: str, cache: Any = None, branch: str = "cond",
                 skip_blocks: tuple[int, ...] = ()) -> Any:
        """(x, t[, frames]) -> velocity of the prompt ``text`` ("pos", "neg", or "pair": x holds
        [cond; uncond] rows); ``frames``: the latent frames of a sliding window x holds.

        With a step cache, each sliding window is a branch of its own (its tokens and residuals
        are its own); the skip-layer pass (``skip_blocks``) always runs its whole stack."""
        dit, device, call = self.dit, self.device, self.call

        def velocity(x: Any, t: Any, frames: slice | None = None) -> Any:
            rows, window = x.shape[0], slice(0, x.shape[2]) if frames is None else frames
            tt = call.timesteps(x, t, dit.cfg.patch_size, window).to(device)
            extras = call.dit_extras(window, rows, device, text)
            more = {} if extras is None else {"extras": extras}  # DiTs without extras take none
            y, context = call.y(window, rows), self.context(text)
            if cache is None or skip_blocks:
                return dit(x.to(device), tt, context, y=y, skip_blocks=skip_blocks, **more).float()
            from wanflow.models.dit_cache import cached_forward

            return cached_forward(dit, x.to(device), tt, context, y=y, cache=cache,
                                  branch=window_branch(branch, frames), **more).float()

        return velocity


def window_branch(branch: str, frames: slice | None) -> str:
    """The step cache's branch of a guidance pass over the latent frames ``frames`` of a sliding
    window (``"cond@0:8"``); the pass's own name when it runs over the whole clip."""
    return branch if frames is None else f"{branch}@{frames.start}:{frames.stop}"
