"""What a LongCat-Video refinement recipe must be (``[inputs].longcat_refine``, docs/longcat.md).

The refinement runs the DiT with the release's refinement LoRA, which the recipe names as a
``[[lora]]`` whose target is ``"refine"``; its settings and such LoRAs are read only when it is
on, and only by longcat-video (``longcat_rules`` refuses them in other families' recipes); so is
``[runtime].sparse_attention``, how its block-sparse attention is computed; a training stage
makes no video to refine.
"""

from __future__ import annotations

from wanflow.families.longcat import REFINE_LORA, REFINE_MULTIPLE, REFINE_STAGE, REPO
from wanflow.recipe.problems import Problems
from wanflow.recipe.schema import Inputs, Recipe, Runtime

#: The refinement's own settings, read only when ``longcat_refine`` is on.
SETTINGS = ("longcat_refine_steps", "longcat_refine_strength", "longcat_refine_spatial_only",
            "longcat_refine_width", "longcat_refine_height")
_FIX_LORA = (f'[[lora]] (source = "modelscope:{REPO}", file = "{REFINE_LORA}", target = "{REFINE_STAGE}")')


def check_refine(recipe: Recipe, problems: Problems) -> None:
    """A longcat-video recipe's refinement settings and refinement LoRAs."""
    inputs, defaults = recipe.inputs, Inputs()
    refine_loras = [i for i, lora in enumerate(recipe.lora) if lora.target == REFINE_STAGE]
    if not inputs.longcat_refine:
        for name in SETTINGS:
            if getattr(inputs, name) != getattr(defaults, name):
                problems.add(("inputs", name), getattr(inputs, name), "is read only by the 720p refinement: set "
                             "[inputs].longcat_refine = true, or remove it")
        for i in refine_loras:
            problems.add(("lora", i, "target"), REFINE_STAGE, "patches the 720p refinement, which runs only with "
                         "[inputs].longcat_refine = true: set it, or remove this [[lora]]")
        if recipe.runtime.sparse_attention != Runtime().sparse_attention:
            problems.add(("runtime", "sparse_attention"), recipe.runtime.sparse_attention, "is read only by the "
                         "720p refinement's block-sparse attention (LongCat's clip attends densely): set "
                         "[inputs].longcat_refine = true, or remove it")
        return
    key = ("inputs", "longcat_refine")
    if recipe.train is not None:
        problems.add(key, True, "a training stage makes no video to refine: remove it")
        return
    if not refine_loras:
        problems.add(key, True, f"runs the DiT with the release's refinement LoRA: add it as {_FIX_LORA}")
    w, h = inputs.longcat_refine_width, inputs.longcat_refine_height
    if bool(w) != bool(h):
        which = "longcat_refine_height" if w else "longcat_refine_width"
        problems.add(("inputs", which), 0, "give the refined width and height together (both 0: the authors' "
                     "720p size nearest the video's aspect)")
    for name, value in (("longcat_refine_width", w), ("longcat_refine_height", h)):
        if value % REFINE_MULTIPLE:
            lo = value - value % REFINE_MULTIPLE
            problems.add(("inputs", name), value, f"must be a multiple of {REFINE_MULTIPLE} (the VAE's 8 x the "
                         f"patch's 2 x the attention chunk's 4): use {lo or REFINE_MULTIPLE} or {lo + REFINE_MULTIPLE}")
