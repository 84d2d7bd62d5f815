"""The blocks beside a DiT's stack that its train step runs, read off the checkpoint's names.

Wan2.2-S2V's audio injectors follow some of its blocks, Wan2.2-Animate's face blocks every fifth:
each runs on a block's output and checkpointing never recomputes it, so what it keeps for backward
is held from the forward on (``wanflow.memory.train_estimate.SideBlocks``). Under a LoRA the
gradient passes through them frozen (or adapted, where the targets match their layers); full
fine-tuning of S2V trains its injectors with every other weight, while Animate's full
fine-tuning counts its face blocks among its trained parts (``Parts``).

S2V's frame packer reads the motion context, which a training sample never has: its weights get
no gradient, so the optimizer keeps no state for them (``untrained_prefixes``).

No torch: the planner reads these before any model loads.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from wanflow.memory.side_estimate import SideBlocks
from wanflow.memory.train_estimate import Adapters

#: A side block's parameter names: its kind's pattern, the block's index in group 1.
SIDE_NAMES = {"audio": re.compile(r"^audio_injector\.injector\.(\d+)\."),
              "face": re.compile(r"^face_adapter\.fuser_blocks\.(\d+)\.")}
#: Layers of a side block that read its own condition (speech or face tokens), not the DiT's tokens.
CONDITION_READERS = {"audio": ("k", "v"), "face": ("linear1_kv",)}
#: What S2V trains nothing of in a train step (no motion context, so no motion tokens).
S2V_UNTRAINED = ("frame_packer.",)


def side_blocks(names: Collection[str], linears: Mapping[str, tuple[int, ...]], adapted: Collection[str],
                rank: int, method: str) -> tuple[SideBlocks, ...]:
    """The side blocks of a DiT whose checkpoint holds ``names``, as its train step runs them.

    ``linears``: every Linear, name -> (out, in); ``adapted``: those a LoRA adapts (empty under
    full fine-tuning); ``rank``: the LoRA's."""
    found = []
    for kind, pattern in SIDE_NAMES.items():
        if kind == "face" and method != "lora":
            continue  # full fine-tuning of Animate trains them as its parts
        count = len({m.group(1) for name in names if (m := pattern.match(name))})
        if count:
            found.append(SideBlocks(kind, count, _adapters(kind, linears, adapted, rank)))
    return tuple(found)


def _adapters(kind: str, linears: Mapping[str, tuple[int, ...]], adapted: Collection[str],
              rank: int) -> Adapters | None:
    """A LoRA's adapters in the first side block of ``kind`` that read the DiT's tokens."""
    first = {name: linears[name] for name in adapted if (m := SIDE_NAMES[kind].match(name)) and m.group(1) == "0"}
    inputs = [shape[1] for name, shape in first.items() if name.rsplit(".", 1)[-1] not in CONDITION_READERS[kind]]
    if not inputs:
        return None
    return Adapters(rank, sum(inputs), sum(inputs), 0, len(inputs))


def untrained_prefixes(names: Collection[str]) -> tuple[str, ...]:
    """Parameter-name prefixes a train step gives no gradient: S2V's frame packer."""
    return S2V_UNTRAINED if any(SIDE_NAMES["audio"].match(name) for name in names) else ()
