"""The train step's peak memory, from the DiT's shape, the ``[train]`` settings and the largest bucket.

No torch: the planner predicts it before any model loads. What the train step holds at its peak:

- **weights** of every DiT it trains (A14B: both experts stay resident), as they are stored:
  the compute dtype for a LoRA's frozen base (fp8 with ``[memory].fp8``), fp32 for full
  fine-tuning (the planner sizes them from the checkpoint headers);
- **trained state**: AdamW's two fp32 moments per trained parameter, the parameter's fp32 copy for
  a LoRA (full fine-tuning's copy is its weight), and its fp32 gradient during backward;
- **activations** of one micro-batch of the largest bucket.

The activation coefficients were counted on tiny DiTs (every tensor autograd saves, and every live
tensor of a CPU training step, ``tests/memory/test_train_estimate.py`` checks them within 20 %).
Per video token (B·L of them), with the compute itemsize s, width D, FFN width F:

- one block holds for backward, under LoRA: ~8 (B, L, D) tensors and the GELU's input at s
  (``s (8 D + F)``), the fp32 view the three q/k RMS norms take (``12 D``), and each adapter's fp32
  input (peft casts its input to the adapter's fp32; at fp32 those are the module's own input, so
  modules reading one tensor — q, k and v — share it), plus each adapter's rank-wide product;
  under full fine-tuning every Linear's and norm's input: ``s (23 D + 2 F)``; a CLIP family's
  second attention adds ``2 s D``; per-token timesteps (TI2V) add fp32 modulations ``32 D``;
- the block's context: keys and values of the prompt (and image) tokens, ``s 2 D + 4 D`` (plus
  the adapters' fp32 copies of the context) per text token under LoRA, ``5 s D`` under full;
- gradient checkpointing holds each block's input instead (``s D``) and recomputes one block at
  a time in backward; without it every block's tensors are held; direct distillation runs the
  student sampler's steps in one graph, so each step's pass leaves its own;
- backward's working set: the FFN's hidden gradients (``2 s F``), the RoPE tables and the head's
  fp32 copy of its input.

Full fine-tuning of a DiT's own parts alone (Animate's, Video-As-Prompt's reference stream, or a
component outside it, speed control's motion controller, whose offset joins every block: ``Parts``)
counts the trained parameters' state only; the frozen blocks their gradient passes through hold
what backward needs for that (``carried_token_bytes``), the trained ones full fine-tuning's
tensors, and trained parts outside the blocks their own (``SIDE_BLOCK``, a trained encoder's
bytes). A LoRA beside a frozen second stream counts the stream's frozen blocks the same way
(``frozen_stream_blocks``). ``tests/memory/test_train_parts.py`` counts these. Blocks beside the
stack under a LoRA or full fine-tuning of every weight (S2V's audio injectors, Animate's face
blocks under a LoRA: ``SideBlocks``, read off the names by ``wanflow.memory.train_sides``) are
never recomputed, so what they keep is held from the forward on; ``tests/memory/test_train_sides.py``
counts them.

Gradients appear block by block in backward while the blocks' tensors are freed, so the peak is the
larger of backward's start (every activation, only the head's gradients) and its end (every
block's gradients, one block's activations). A device run's fused AdamW (``foreach``) also takes
an fp32 temporary of every trained parameter after backward. ``offload_activations`` moves what
autograd saves to host memory (a CPU run has nowhere to move it).

Host memory besides: the checkpoint written every ``checkpoint_every`` steps is built in memory
(the trained parameters copied, then serialised with their moments), and loading passes one
tensor at a time through the host.

A distributed run (``processes``, ``spread``): the device peak is one process's, sized as a whole
replica (DDP holds one; FSDP and ZeRO shard, so for them it is an upper bound), and host memory
counts every process's. DeepSpeed keeps the optimizer on the host (both stages offload it,
``train.distributed.deepspeed_config``): an fp32 master, two moments and an fp32 gradient per
trained parameter (``ZERO_OFFLOAD``), partitioned over the processes, so counted once; ZeRO-3
keeps the parameters there too, after each process built the whole model on the host.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import attrs

from wanflow.memory.estimates import FP32, dit_tokens
from wanflow.memory.side_estimate import SideBlocks, side_block_bytes
from wanflow.models.dit_config import DitConfig

#: AdamW's two moments per trained parameter, fp32 (kept from the first step to the last).
MOMENTS = 2 * FP32
#: The fp32 gradient of a trained parameter, from its block's backward to the optimizer step.
GRAD = FP32
#: Host bytes per trained parameter while a checkpoint is built: the parameters' fp32 copy, and
#: torch.save's growing buffer of them and their two moments (it over-allocates by an eighth).
CHECKPOINT = FP32 + 3 * FP32 * 9 / 8
#: Host bytes per trained parameter DeepSpeed's offloaded optimizer holds: fp32 master, moments, gradient.
ZERO_OFFLOAD = FP32 + MOMENTS + GRAD


@attrs.frozen
class Adapters:
    """The Linear layers a LoRA adapts in one block, as the activations see them."""

    rank: int
    token_inputs: int  # Σ in_features of adapted layers reading video tokens
    distinct_token_inputs: int  # the same, layers reading one tensor (q, k, v) counted once
    context_inputs: int  # Σ in_features of adapted layers reading the text context (k, v)
    token_layers: int  # adapted layers reading video tokens


@attrs.frozen
class Parts:
    """Full fine-tuning of a DiT's own parts alone (``wanflow.models.full_training``), as its
    activations see it: the blocks whose weights train hold full fine-tuning's tensors; every other
    block of the stack is frozen, but a trained part before it (an embedding, a stream joining
    block 0) makes its input require grad, so it holds what backward needs to pass the gradient
    through it (the inputs of its norms, attention and GELU, not of its Linears)."""

    trained_blocks: int  # blocks of the stack with a trained weight
    #: blocks of a trained second stream (Video-As-Prompt's reference stream), each joined to a
    #: block of the stack and reading as many tokens as the video (the reference is on its grid)
    stream_blocks: int = 0
    #: trained blocks beside the stack, reading the video tokens after a block of it and never
    #: recomputed (Animate's face blocks): ``SIDE_BLOCK`` D-wide values per token each
    side_blocks: int = 0
    #: what a trained encoder run inside the step keeps for backward, per clip (Animate's motion
    #: encoder over the clip's face crops, ``wanflow.memory.motion_estimate``)
    encoder_bytes: int = 0
    #: the blocks' modulation requires grad (speed control's motion controller trains alone and
    #: its offset joins every block's modulation): each frozen block also keeps what its scales
    #: and gates multiply, ``MODULATED`` D-wide values per token
    modulated: bool = False


@attrs.frozen
class TrainSetup:
    """What sizes a train step's activations: the method, the micro-batch and its precision."""

    method: Literal["lora", "full"]
    batch: int  # clips per micro-batch
    grid: tuple[int, int, int]  # latent grid of the largest bucket
    itemsize: int  # bytes per activation value (full fine-tuning computes in fp32)
    checkpointing: bool
    offload: bool = False  # autograd's saved tensors go to host memory (device runs)
    adapters: Adapters | None = None  # LoRA only
    per_token_time: bool = False  # TI2V: a timestep per token (its clean first frame)
    forwards: int = 1  # DiT passes in one graph (direct distillation: the student sampler's steps)
    parts: Parts | None = None  # full fine-tuning of some parts alone (None: every weight trains)
    #: blocks a frozen second stream joins, reading as many tokens as the video (Video-As-Prompt's
    #: reference stream under a LoRA of the main stream: the joint attention gives it the gradient)
    frozen_stream_blocks: int = 0
    #: blocks beside the stack under a LoRA or full fine-tuning of every weight (S2V's audio
    #: injectors, Animate's face blocks under a LoRA): ``SideBlocks``
    side_blocks: tuple[SideBlocks, ...] = ()


@attrs.frozen
class Trained:
    """One DiT the train step holds: its stored weights and its trained parameters."""

    weight_bytes: int
    params: int  # trained parameters (LoRA factors, or every weight)
    block_params: int  # of which in one block (the gradients one block's backward adds)
    layers: int


@attrs.frozen
class TrainPeak:
    """The train step's predicted peak: on the compute device (None in a CPU run) and in host memory,
    with the parts that make the device's (or, in a CPU run, the host's)."""

    device_bytes: int | None
    host_bytes: int
    weights: int
    state: int  # trained parameters' copies, moments and the gradients at the peak
    activations: int
    checkpoint: int  # host bytes while a checkpoint is built


#: D-wide values a side block (``Parts.side_blocks``) keeps per video token beyond what the next
#: block keeps of the same tensors: its queries' projection input and norm, attention's output
#: (counted on Animate's face blocks, as the growth of a checkpointed stack by five blocks and one).
SIDE_BLOCK = 3

#: D-wide values per video token a frozen block keeps when its modulation requires grad
#: (``Parts.modulated``): the two normed inputs its scales multiply and the attention's and
#: FFN's outputs its gates multiply (counted on tiny DiTs under a trained motion controller).
MODULATED = 4

#: Layers of a block that read the prompt's tokens rather than the video's.
TEXT_READERS = ("cross_attn.k", "cross_attn.v")
#: ... and the image's (Wan2.1 I2V/FLF2V).
IMAGE_READERS = ("cross_attn.k_img", "cross_attn.v_img")
#: Layers of a block that read one tensor together: at fp32 their adapters hold one input.
SHARED_INPUT = ("self_attn.q", "self_attn.k", "self_attn.v")


def lora_adapters(linears: Mapping[str, tuple[int, ...]], adapted: Collection[str],
                  rank: int) -> tuple[Adapters, int, int]:
    """A LoRA's adapters in block 0, its trained parameters, and those of one block.

    ``linears``: every Linear of the DiT, official module name -> weight shape (out, in);
    ``adapted``: the names the LoRA's targets match (peft's suffix rule). Each adapted layer
    trains rank × (in + out) parameters.
    """
    params = sum(rank * sum(linears[name]) for name in adapted)
    block = {name.removeprefix("blocks.0."): linears[name] for name in adapted if name.startswith("blocks.0.")}
    tokens = {n: shape[1] for n, shape in block.items() if n not in TEXT_READERS + IMAGE_READERS}
    distinct = sum(i for n, i in tokens.items() if n not in SHARED_INPUT) + max(
        (i for n, i in tokens.items() if n in SHARED_INPUT), default=0)
    context = sum(shape[1] for n, shape in block.items() if n in TEXT_READERS)
    adapters = Adapters(rank, sum(tokens.values()), distinct, context, len(tokens))
    return adapters, params, sum(rank * sum(shape) for shape in block.values())


def block_token_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """Bytes one block holds for backward per video token."""
    s, d, f = setup.itemsize, cfg.dim, cfg.ffn_dim
    if setup.method == "full":
        held = s * (23 * d + 2 * f)
    else:
        a = setup.adapters or Adapters(0, 0, 0, 0, 0)
        inputs = a.token_inputs if s < FP32 else a.distinct_token_inputs
        held = s * (8 * d + f) + 3 * FP32 * d + FP32 * inputs + FP32 * a.rank * a.token_layers
    if cfg.clip:
        held += 2 * s * d
    if setup.per_token_time:
        held += 8 * FP32 * d
    return held


def block_context_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """Bytes one block holds for backward for the context of one clip (prompt and image tokens)."""
    s, d = setup.itemsize, cfg.dim
    if setup.method == "full":
        return (cfg.text_len + cfg.image_len) * 5 * s * d
    a = setup.adapters or Adapters(0, 0, 0, 0, 0)
    text = cfg.text_len * (2 * s * d + FP32 * d + (FP32 * a.context_inputs if s < FP32 else 0))
    return text + cfg.image_len * 3 * s * d


def carried_token_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """Bytes a frozen block whose input requires grad holds per video token: the inputs of its
    norms and modulations, attention's q, k, v and output, the GELU's input, and the fp32 view
    the q/k RMS norms take, as under a LoRA: ``s (9 D + F) + 12 D`` (counted; a CLIP family's
    second attention adds nothing measurable)."""
    return setup.itemsize * (9 * cfg.dim + cfg.ffn_dim) + 3 * FP32 * cfg.dim


def carried_context_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """... and per clip: the cross-attention's keys and values of the prompt, ``2 s D`` a token."""
    return cfg.text_len * 2 * setup.itemsize * cfg.dim


def block_bytes(cfg: DitConfig, setup: TrainSetup, tokens: int) -> list[tuple[int, int]]:
    """(held for backward, checkpointed input) of every block of one forward, in bytes."""
    s, d = setup.itemsize, cfg.dim
    block_input = tokens * s * d if setup.checkpointing else 0
    if setup.parts is None:
        held = tokens * block_token_bytes(cfg, setup) + setup.batch * block_context_bytes(cfg, setup)
        carried = tokens * carried_token_bytes(cfg, setup) + setup.batch * carried_context_bytes(cfg, setup)
        joined = [(held + carried, 2 * block_input)] * setup.frozen_stream_blocks
        return joined + [(held, block_input)] * (cfg.num_layers - setup.frozen_stream_blocks)
    whole = attrs.evolve(setup, parts=None)
    trained = tokens * block_token_bytes(cfg, whole) + setup.batch * block_context_bytes(cfg, whole)
    carried = tokens * carried_token_bytes(cfg, setup) + setup.batch * carried_context_bytes(cfg, setup)
    parts = setup.parts
    if parts.modulated:
        carried += tokens * MODULATED * s * d
    blocks = [(trained, block_input)] * parts.trained_blocks
    blocks += [(carried, block_input)] * (cfg.num_layers - parts.trained_blocks)
    joined = [(held + trained, 2 * held_input) for held, held_input in blocks[:parts.stream_blocks]]
    return joined + blocks[parts.stream_blocks:]


def _parts_bytes(cfg: DitConfig, setup: TrainSetup, tokens: int) -> int:
    """Held through one forward by trained parts outside the blocks (``Parts``): side blocks'
    tensors and a trained encoder's."""
    parts = setup.parts
    if parts is None:
        return 0
    return tokens * parts.side_blocks * SIDE_BLOCK * setup.itemsize * cfg.dim + setup.batch * parts.encoder_bytes


def _working_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """Per token, backward's transients: the FFN's hidden gradients, RoPE tables, the head's fp32 input."""
    s = setup.itemsize
    return 2 * s * cfg.ffn_dim + 2 * s * cfg.head_dim + FP32 * cfg.dim


def _shared_bytes(cfg: DitConfig, setup: TrainSetup, tokens: int) -> int:
    """Held once for every block: the embedded context, and per-token timesteps' modulation."""
    context = setup.batch * (cfg.text_len + cfg.image_len) * setup.itemsize * cfg.dim
    return context + (6 * FP32 * cfg.dim * tokens if setup.per_token_time else 0)


def activation_bytes(cfg: DitConfig, setup: TrainSetup, *, device_run: bool) -> tuple[int, int, int]:
    """(on the device at backward's start, at its end, moved to the host) in bytes, one micro-batch.

    ``device_run``: False for a CPU run, where ``offload_activations`` moves nothing.
    """
    tokens = setup.batch * dit_tokens(cfg, setup.grid)
    blocks = block_bytes(cfg, setup, tokens)
    rest = tokens * _working_bytes(cfg, setup) + setup.forwards * (
        _shared_bytes(cfg, setup, tokens) + _parts_bytes(cfg, setup, tokens) + side_block_bytes(cfg, setup))
    offloaded = setup.offload and device_run
    start, end = stack_bytes(blocks, rest, setup, offloaded=offloaded)
    return start, end, _offloaded_bytes(cfg, setup, tokens, blocks) if offloaded else 0


def stack_bytes(blocks: Sequence[tuple[int, int]], rest: int, setup: TrainSetup, *,
                offloaded: bool) -> tuple[int, int]:
    """(at backward's start, at its end) on the compute device, of a stack of blocks (each: held for
    backward, checkpointed input) and ``rest`` (held once, and backward's working set).

    The forward passes leave every block's tensors, or with checkpointing each block's input, and
    backward recomputes one block at a time; at its end one block's tensors are left. Offloaded,
    what autograd saves waits in host memory and one block's tensors are on the device at a time.
    """
    largest = max((held for held, _ in blocks), default=0)
    if offloaded:
        return largest + rest, largest + rest
    left = setup.forwards * sum(block_input if setup.checkpointing else held for held, block_input in blocks)
    recomputed = largest if setup.checkpointing else 0
    return left + recomputed + rest, max((sum(b) for b in blocks), default=0) + rest


def _offloaded_bytes(cfg: DitConfig, setup: TrainSetup, tokens: int, blocks: list[tuple[int, int]]) -> int:
    """Host bytes of ``offload_activations``: each tensor autograd saves is copied at every save.

    Checkpointed: each block's input and its own copy of the embedded context, and the head's fp32
    input. Without checkpointing every block's tensors, copied once per saving operation (q, k and
    v each save their input, each projection its weight): 5/3 of the distinct bytes, counted.
    """
    if not setup.checkpointing:
        return setup.forwards * sum(held for held, _ in blocks) * 5 // 3
    context = setup.batch * (cfg.text_len + cfg.image_len) * setup.itemsize * cfg.dim
    inputs = sum(block_input + context for _, block_input in blocks) + tokens * FP32 * cfg.dim
    return setup.forwards * inputs


def train_peak(cfg: DitConfig, setup: TrainSetup, dits: Sequence[Trained], *, device_run: bool,
               accumulation: int = 1, loading_bytes: int = 0) -> TrainPeak:
    """The train step's peak with every DiT in ``dits`` resident (one trains per micro-batch).

    ``accumulation``: micro-batches per optimizer step (A14B: with several, each expert may hold
    gradients at once). ``loading_bytes``: what loading passes through the host (a device run).
    """
    return held_peak(setup.method, dits, activation_bytes(cfg, setup, device_run=device_run),
                     device_run=device_run, accumulation=accumulation, loading_bytes=loading_bytes)


def held_peak(method: str, dits: Sequence[Trained], activations: tuple[int, int, int], *, device_run: bool,
              accumulation: int = 1, loading_bytes: int = 0) -> TrainPeak:
    """The peak of training ``dits`` (each resident, one trained per micro-batch) whose micro-batch
    holds ``activations`` (``activation_bytes``' three numbers): the rule every DiT's estimate shares."""
    weights = sum(d.weight_bytes for d in dits)
    trained = sum(d.params for d in dits)
    persistent = trained * (MOMENTS + (FP32 if method == "lora" else 0))
    start, end, offloaded = activations
    grads, activations = max((_phases(d, others, start, end, device_run, accumulation)
                              for d, others in _each_with_the_others(dits)), key=sum)
    checkpoint = int(CHECKPOINT * trained)
    if device_run:
        host = max(loading_bytes, offloaded, checkpoint)
        return TrainPeak(weights + persistent + grads + activations, host, weights, persistent + grads,
                         activations, checkpoint)
    host = weights + persistent + max(grads + activations, checkpoint)
    return TrainPeak(None, host, weights, persistent + grads, activations, checkpoint)


def _each_with_the_others(dits: Sequence[Trained]) -> list[tuple[Trained, int]]:
    """Each DiT, and the parameters the others train."""
    total = sum(d.params for d in dits)
    return [(d, total - d.params) for d in dits]


def _phases(d: Trained, others: int, start: int, end: int, device_run: bool,
            accumulation: int) -> tuple[int, int]:
    """(gradient bytes, activation bytes) at the fullest moment of training ``d``: backward's
    start (the head's gradients), its end (all but the first block's) or, on a device, the
    optimizer step (every gradient and an fp32 temporary of each trained parameter). With
    several micro-batches per step, the ``others`` may hold gradients from an earlier one."""
    held = others * GRAD if accumulation > 1 else 0
    phases = [((d.params - d.layers * d.block_params) * GRAD, start),
              ((d.params - d.block_params) * GRAD, end)]
    if device_run:
        phases.append((d.params * GRAD, d.params * FP32))
    grads, activations = max(phases, key=sum)
    return held + grads, activations


def spread(found: TrainPeak, dits: Sequence[Trained], distribution: str, processes: int) -> TrainPeak:
    """``found`` (one process's peak) in a run of ``processes`` under ``distribution`` (the module
    docstring says what each holds): the device peak one process's, host memory every process's."""
    host = found.host_bytes * processes
    if distribution.startswith("deepspeed"):
        host += sum(d.params for d in dits) * ZERO_OFFLOAD
    if distribution == "deepspeed-zero3":
        weights = sum(d.weight_bytes for d in dits)
        host = max(host + weights, processes * weights)  # partitioned on the host, after each built it whole
    return attrs.evolve(found, host_bytes=host)
