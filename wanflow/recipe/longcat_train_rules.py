"""What a LongCat-Video ``[train]`` recipe must be: the settings its training does not honour.

LongCat-Video trains through ``[train]`` as DiffSynth trains it (docs/longcat.md): flow matching
on its DiT, a LoRA on its own module names or full fine-tuning, text-to-video samples and, where
a row has a ``longcat_video`` column, continuation samples. What the stage offers for Wan DiTs
and has not been built for LongCat's is refused here, naming the key and the fix, before
anything loads: ``direct_distill`` (the few-step student of a Wan sampler) and compiled blocks.
It trains in several processes under every ``[train].distribution`` (FSDP shards its
``Block``s, as a Wan DiT's); what DeepSpeed cannot hold of it (its fp32 layers in a bf16 run, an
fp8 base) is refused with the run's dtype (``steps.longcat_train_checks``). A LoRA's frozen base
may be stored in fp8 (``[memory].fp8``), as a Wan DiT's. A clip too short for its continuation
frames is refused with the dataset (``steps.train_checks``).
"""

from __future__ import annotations

from wanflow.recipe.problems import Problems
from wanflow.recipe.schema import Recipe


def check_longcat_training(recipe: Recipe, problems: Problems) -> None:
    """Refuse the ``[train]`` settings LongCat-Video's training does not honour."""
    t = recipe.train
    if t is None:
        return
    if t.task != "sft":
        problems.add(("train", "task"), t.task, "LongCat-Video trains with the flow-matching objective only "
                     '(DiffSynth\'s sft); direct_distill runs a Wan sampler\'s steps, which is not built for '
                     'LongCat\'s DiT: use task = "sft"')
    if recipe.runtime.compile != "none":
        problems.add(("runtime", "compile"), recipe.runtime.compile, "compiling LongCat's DiT's blocks is not built "
                     'yet for its training (generation compiles them): use "none"')
