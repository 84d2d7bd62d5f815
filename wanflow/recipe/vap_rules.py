"""What a Video-As-Prompt recipe cannot honour, refused at validation.

Its DiT (the Wan2.1 I2V DiT and the reference stream joining ten of its blocks) loads whole
through its own loader (``memory/dit_variants.py``): fp8 storage of its blocks is not built, so
``[memory].fp8`` (and fp8 matmuls) must be refused here, before any model loads, not when the
loader meets it. Compiled blocks are honoured: the blocks without the reference stream compile
as the Wan DiT's do.
"""

from __future__ import annotations

from wanflow.families.spec import FamilySpec
from wanflow.recipe.problems import Problems, refuse_whole_dit_settings
from wanflow.recipe.schema import Recipe

#: The conditioner kind only Video-As-Prompt families declare.
REFERENCE_KIND = "vap-video"


def check_vap(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Refuse the settings Video-As-Prompt's DiT would not read; a no-op for other families."""
    if any(c.kind == REFERENCE_KIND for c in family.conditioners):
        refuse_whole_dit_settings(problems, recipe, "Video-As-Prompt's DiT", compile_too=False)
