"""LongCat-Video's train step peak, from its DiT's shape, the ``[train]`` settings and the largest bucket.

No torch. The peak is a Wan DiT's train step's (``wanflow.memory.train_estimate``: the same
``TrainPeak``, the same weights, trained state and phase rule, ``held_peak``), with LongCat's own
blocks counted for what they hold for backward. Its blocks (``wanflow.models.longcat``) compute
their norms, modulations and gates in fp32 whatever the compute dtype, fuse q/k/v and the
cross-attention's keys and values, and feed a SwiGLU; so, counted on tiny DiTs (every tensor
autograd saves, and every live tensor of a CPU training step: ``tests/memory/
test_longcat_train_estimate.py`` checks them within 20 %), per video token at the compute
itemsize s, width D, SwiGLU width F:

- one block under a LoRA holds 10 (B, L, D) tensors and three SwiGLU hidden ones at s (the
  fused projection's three, the rotated q and k, the cross-attention's normed q, both
  attentions' outputs, both gated branches; ``s (10 D + 3 F)``), the fp32 views its two modulations, its pre-cross-attention norm and its
  three q/k norms take (``8 · 4 D``; at fp32 the self-attention's q and k are their projection's
  own output, ``6 · 4 D``), each adapter's fp32 input (peft casts its input to the adapter's
  fp32; at fp32 those are the module's own input, so w1 and w3 share one, and the projections
  after an attention read what the attention keeps) and each adapter's rank-wide product;
- under full fine-tuning (fp32) every Linear's and norm's input: ``4 (22 D + 4 F)``;
- the block's cross-attention over the prompt's ``text_len`` slots (the released DiT pads the
  prompt to 512 zero slots, all attended): its keys and values and the normed keys, ``3 s D``
  per slot, plus under a LoRA below fp32 the k norm's fp32 view and the kv adapter's fp32 input;
  under full fine-tuning ``4 · 4 D``;
- gradient checkpointing holds each block's input instead (``s D``) and recomputes one block at
  a time in backward;
- held once: the embedded prompt, the fp32 RoPE tables of the clip's grid, the final layer's
  fp32 norm (its fp32 projection's input under full fine-tuning), and backward's working set
  (a SwiGLU hidden gradient, ``s F``).

A continuation sample (a row with a ``longcat_video`` column) runs its clean conditioning frames
in the same forward as the frames it learns (``wanflow.train.longcat``): they are tokens of the
clip like any other. They skip the cross-attention, which the estimate does not subtract (a few
percent of a block's bytes, to the safe side). The modulation's per-frame tensors are too small
to count. ``offload_activations`` moves what autograd saves to host memory: with checkpointing,
each block's input (the blocks' own tensors are saved inside the checkpoint, recomputed on the
device) and the final layer's; without, each saving operation's copy (``SAVES`` of the distinct
bytes, counted).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from wanflow.memory.estimates import FP32
from wanflow.memory.longcat_estimate import longcat_tokens
from wanflow.memory.train_estimate import (
    Adapters,
    Trained,
    TrainPeak,
    TrainSetup,
    held_peak,
    stack_bytes,
)
from wanflow.models.longcat_config import LongCatConfig

#: Layers of a block that read the projected prompt rather than the video tokens.
CONTEXT_READERS = ("cross_attn.kv_linear",)
#: Layers that read the time embedding, one row per latent frame: their inputs are too small to count.
FRAME_READERS = ("adaLN_modulation.1",)
#: Layers reading an attention's output, which the attention keeps for backward anyway (at fp32
#: their adapters hold nothing more).
AFTER_ATTENTION = ("attn.proj", "cross_attn.proj")
#: Layers reading one tensor together (the SwiGLU's two input projections): at fp32 their
#: adapters hold one input.
SHARED_INPUT = ("ffn.w1", "ffn.w3")
#: Without checkpointing, the host copies ``offload_activations`` makes of a block's distinct saved
#: bytes (a tensor several operations save is copied at each save; counted).
SAVES = 1.5


def lora_adapters(linears: Mapping[str, tuple[int, ...]], adapted: Collection[str],
                  rank: int) -> tuple[Adapters, int, int]:
    """A LoRA's adapters in block 0, its trained parameters, and those of one block.

    ``linears``: every Linear of the DiT, module name -> weight shape (out, in); ``adapted``: the
    names the LoRA's targets match (peft's suffix rule, ``final_layer.adaLN_modulation.1``
    included). Each adapted layer trains rank × (in + out) parameters.
    """
    params = sum(rank * sum(linears[name]) for name in adapted)
    block = {name.removeprefix("blocks.0."): linears[name] for name in adapted if name.startswith("blocks.0.")}
    tokens = {n: shape[1] for n, shape in block.items() if n not in CONTEXT_READERS + FRAME_READERS}
    own = {n: i for n, i in tokens.items() if n not in AFTER_ATTENTION}
    distinct = sum(i for n, i in own.items() if n not in SHARED_INPUT) + max(
        (i for n, i in own.items() if n in SHARED_INPUT), default=0)
    context = sum(shape[1] for n, shape in block.items() if n in CONTEXT_READERS)
    adapters = Adapters(rank, sum(tokens.values()), distinct, context, len(tokens))
    return adapters, params, sum(rank * sum(shape) for shape in block.values())


def block_token_bytes(cfg: LongCatConfig, setup: TrainSetup) -> int:
    """Bytes one block holds for backward per video token."""
    s, d, f = setup.itemsize, cfg.hidden_size, cfg.ffn_dim
    if setup.method == "full":
        return s * (22 * d + 4 * f)
    a = setup.adapters or Adapters(0, 0, 0, 0, 0)
    views = 8 if s < FP32 else 6
    inputs = a.token_inputs if s < FP32 else a.distinct_token_inputs
    return s * (10 * d + 3 * f) + FP32 * views * d + FP32 * inputs + FP32 * a.rank * a.token_layers


def block_context_bytes(cfg: LongCatConfig, setup: TrainSetup) -> int:
    """Bytes one block holds for backward for the prompt of one clip (its ``text_len`` slots)."""
    s, d = setup.itemsize, cfg.hidden_size
    if setup.method == "full":
        return cfg.text_len * 4 * s * d
    a = setup.adapters or Adapters(0, 0, 0, 0, 0)
    views = FP32 * (d + a.context_inputs) if s < FP32 else 0
    return cfg.text_len * (3 * s * d + views)


def _once_bytes(cfg: LongCatConfig, setup: TrainSetup, tokens: int) -> int:
    """Held once per micro-batch: the embedded prompt (under full fine-tuning its projection's
    inputs too), the RoPE tables of one clip's grid, the final layer's fp32 tensors, and
    backward's working set (a SwiGLU hidden gradient)."""
    s, d = setup.itemsize, cfg.hidden_size
    prompt = setup.batch * cfg.text_len * s * (3 * d + cfg.caption_channels if setup.method == "full" else d)
    rope = 2 * FP32 * cfg.head_dim * tokens // setup.batch
    head = tokens * FP32 * (3 if setup.method == "full" else 2) * d
    working = tokens * s * cfg.ffn_dim
    return prompt + rope + head + working


def activation_bytes(cfg: LongCatConfig, setup: TrainSetup, *, device_run: bool) -> tuple[int, int, int]:
    """(on the device at backward's start, at its end, moved to the host) in bytes, one micro-batch
    of ``setup.batch`` clips of the latent ``setup.grid`` (conditioning frames included)."""
    tokens = setup.batch * longcat_tokens(cfg, setup.grid)
    held = tokens * block_token_bytes(cfg, setup) + setup.batch * block_context_bytes(cfg, setup)
    block_input = tokens * setup.itemsize * cfg.hidden_size if setup.checkpointing else 0
    blocks = [(held, block_input)] * cfg.depth
    offloaded = setup.offload and device_run
    start, end = stack_bytes(blocks, _once_bytes(cfg, setup, tokens), setup, offloaded=offloaded)
    return start, end, _offloaded_bytes(cfg, setup, tokens, held) if offloaded else 0


def _offloaded_bytes(cfg: LongCatConfig, setup: TrainSetup, tokens: int, held: int) -> int:
    """Host bytes of ``offload_activations``: with checkpointing each block's input and the final
    layer's norm input and fp32 output (what is saved outside the checkpointed blocks); without,
    each block's saved tensors, once per save."""
    if not setup.checkpointing:
        return int(cfg.depth * held * SAVES)
    s, d = setup.itemsize, cfg.hidden_size
    return cfg.depth * tokens * s * d + tokens * (s + FP32) * d


def train_peak(cfg: LongCatConfig, setup: TrainSetup, dit: Trained, *, device_run: bool,
               accumulation: int = 1, loading_bytes: int = 0) -> TrainPeak:
    """The train step's peak with LongCat's DiT resident (``held_peak``'s rule)."""
    return held_peak(setup.method, [dit], activation_bytes(cfg, setup, device_run=device_run),
                     device_run=device_run, accumulation=accumulation, loading_bytes=loading_bytes)
