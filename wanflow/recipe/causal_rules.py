"""What a recipe sampled with the block-causal solver (``[sampler].solver = "krea-causal"``) must be.

The block loop (docs/krea.md) takes the steps, the shift, the seed, the noise device and
``denoising_strength`` (video-to-video) and nothing else of ``[sampler]``: it has no guidance, no
negative prompt, no step cache, no windows and no grid rule of its own. A setting it would ignore
is refused here, naming the key, instead of changing the step's key and not the video; so are
frames that do not fill whole blocks.
"""

from __future__ import annotations

from wanflow.families.krea import CAUSAL_SOLVER, FRAMES_PER_BLOCK
from wanflow.families.spec import FamilySpec
from wanflow.recipe.problems import Problems, refuse_changed
from wanflow.recipe.schema import Recipe, Sampler

#: [sampler] keys the block loop does not read, with why and the fix.
_UNREAD = {
    "cfg_merge": "a guidance option; the block-causal sampler takes no guidance: remove it",
    "cfg_zero_star": "a guidance option; the block-causal sampler takes no guidance: remove it",
    "cfg_zero_init_steps": "a guidance option; the block-causal sampler takes no guidance: remove it",
    "slg_blocks": "skip-layer guidance; the block-causal sampler takes no guidance: remove it",
    "slg_scale": "skip-layer guidance; the block-causal sampler takes no guidance: remove it",
    "slg_start": "skip-layer guidance; the block-causal sampler takes no guidance: remove it",
    "slg_end": "skip-layer guidance; the block-causal sampler takes no guidance: remove it",
    "slg_mode": "skip-layer guidance; the block-causal sampler takes no guidance: remove it",
    "sliding_window_size": "the block-causal sampler already goes block by block over a cache: remove it",
    "sliding_window_stride": "the block-causal sampler already goes block by block over a cache: remove it",
    "strength_schedule": "the block-causal sampler starts video-to-video at its own step list's first t "
                         "(docs/krea.md): remove it",
}


def check_causal(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Refuse what the block-causal sampler cannot honour; a no-op for other solvers."""
    s = recipe.sampler
    if s.solver != CAUSAL_SOLVER:
        return
    if CAUSAL_SOLVER not in family.solvers:
        problems.add(("sampler", "solver"), s.solver, f"the block-causal sampler runs block-causal models only "
                     f"(krea-realtime-video); {family.name} samples with euler, unipc or dpm++")
        return
    if s.cfg != 1.0 and not problems.is_bad(("sampler", "cfg")):
        problems.add(("sampler", "cfg"), s.cfg, "the block-causal sampler takes no guidance (the model is "
                     "distilled without it); use 1.0, or another [sampler].solver")
    if recipe.prompt.negative:
        problems.add(("prompt", "negative"), recipe.prompt.negative, "is never read without guidance "
                     "(the block-causal sampler has none): remove it")
    defaults = Sampler()
    refuse_changed(problems, ("sampler",), s, defaults, _UNREAD)
    if s.cache.method != "none":
        problems.add(("sampler", "cache", "method"), s.cache.method, "a step cache skips passes of a long "
                     "bidirectional loop; the block-causal sampler makes a few calls per block: use \"none\"")
    if recipe.runtime.compile != "none":
        problems.add(("runtime", "compile"), recipe.runtime.compile, "compiles the DiT's blocks as the "
                     "bidirectional forward calls them; the block-causal forward does not: use \"none\"")
    _check_blocks(recipe.video.frames, problems)


def _check_blocks(frames: int, problems: Problems) -> None:
    """Latent frames (frames − 1)/4 + 1 must fill whole blocks of FRAMES_PER_BLOCK."""
    if (frames - 1) % 4 or problems.is_bad(("video", "frames")):
        return  # the 4n+1 rule says it first
    latent = (frames - 1) // 4 + 1
    if latent % FRAMES_PER_BLOCK == 0:
        return
    below = latent - latent % FRAMES_PER_BLOCK
    options = [n for n in (below, below + FRAMES_PER_BLOCK) if n > 0]
    fixes = " or ".join(f"{4 * (n - 1) + 1} ({n // FRAMES_PER_BLOCK} block{'s' * (n > FRAMES_PER_BLOCK)})"
                        for n in options)
    problems.add(("video", "frames"), frames, f"makes {latent} latent frames, but the block-causal sampler "
                 f"generates whole blocks of {FRAMES_PER_BLOCK}; use {fixes}")
