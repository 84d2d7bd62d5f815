"""encode-text: one prompt through umT5; the prompt and the negative prompt are separate nodes."""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime

#: The params every model step reads: they change the numbers, so they are in the key.
RUNTIME_READS = ("runtime.device", "runtime.dtype")


@attrs.frozen
class EncodeText:
    """umT5 features of ``prompt_key``'s text, trimmed to its real tokens: (1, L, D)."""

    #: Where the text comes from ("prompt.text", "prompt.negative"): a param the node reads when
    #: ``text`` is None. The pipeline passes the text itself, so a prompt encoded for a video and
    #: the same prompt of a training sample are one node of the cache (same key).
    prompt_key: str = attrs.field(default="prompt.text", metadata=NOT_KEYED)
    text: str | None = None
    dtype: str = "auto"  # [models.<component>].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.<component>].device; "cpu" runs it on the CPU
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The memory plan's predicted peak of this step (said if it runs out of memory; not keyed).
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-text"
    version: int = 1
    output: str = "tensors"

    @property
    def reads(self) -> tuple[str, ...]:
        return RUNTIME_READS if self.text is not None else (self.prompt_key, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        tokenizer_dir = ctx.weight("tokenizer.0").parent
        encoder = model_pool.text_encoder(ctx.weight("text_encoder"), tokenizer_dir, dtype, device,
                                           self.residency)
        with torch.no_grad():
            out = encoder.encode([self.text if self.text is not None else ctx.params[self.prompt_key]])
        length = int(out.lengths[0])
        return {"context": out.embeddings[:, :length].cpu().contiguous()}  # (1, L, D)
