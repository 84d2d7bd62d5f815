"""TeaCache for Wan: the published coefficients by architecture, the plan, the target-speed solver.

TeaCache's signal (the relative L1 change of the time embedding) depends only on the timesteps and
the model's time-embedding weights, never on the latent or the prompt. So the steps a threshold
computes are known before sampling, and a threshold reaching a requested speed-up can be solved
for from the schedule (Wan2GP's ``compute_teacache_threshold`` does this with a sweep; here every
breakpoint of the plan is enumerated, so the answer is the smallest threshold that reaches it).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence

import attrs

from wanflow.errors import ModelInputError
from wanflow.sampling.step_cache import BranchState, CachePlan, Signals, TeaCacheRule

#: The rescaling polynomials the TeaCache authors fitted on Wan2.1 (TeaCache4Wan2.1), highest
#: power first, per model and signal ("e": time embedding; "e0": projected modulation, the
#: ``use_ret_steps`` mode). The ComfyUI WanVideoWrapper and Wan2GP carry the same values.
TEACACHE_COEFFICIENTS: Mapping[tuple[str, str], tuple[float, ...]] = {
    ("wan2.1-t2v-1.3b", "e"): (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    ("wan2.1-t2v-1.3b", "e0"): (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    ("wan2.1-t2v-14b", "e"): (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    ("wan2.1-t2v-14b", "e0"): (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
    ("wan2.1-i2v-14b-480p", "e"): (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
    ("wan2.1-i2v-14b-480p", "e0"): (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    ("wan2.1-i2v-14b-720p", "e"): (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    ("wan2.1-i2v-14b-720p", "e0"): (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}


@attrs.frozen
class DitArchitecture:
    """What a coefficient set is matched on, read off the DiT's config (never a file name)."""

    model_type: str  # "t2v" | "i2v" | "flf2v" | "ti2v"
    dim: int
    clip: bool  # Wan2.1 I2V/FLF2V carry CLIP image tokens; Wan2.2 I2V-A14B does not
    experts: int = 1  # 2 for the Wan2.2 A14B families

    @classmethod
    def of(cls, config: object, experts: int = 1) -> DitArchitecture:
        """From a ``DitConfig`` (any object with model_type, dim and clip)."""
        return cls(config.model_type, config.dim, config.clip, experts)  # type: ignore[attr-defined]


#: The architecture each published set was fitted on (480p and 720p I2V share one).
PUBLISHED_ARCHITECTURES: Mapping[str, DitArchitecture] = {
    "wan2.1-t2v-1.3b": DitArchitecture("t2v", 1536, False),
    "wan2.1-t2v-14b": DitArchitecture("t2v", 5120, False),
    "wan2.1-i2v-14b-480p": DitArchitecture("i2v", 5120, True),
    "wan2.1-i2v-14b-720p": DitArchitecture("i2v", 5120, True),
}

CALIBRATE_HINT = (
    "calibrate coefficients on this model (docs/step-cache.md, 'Calibrating') and pass them as "
    "coefficients = \"calibrated\", or use method = \"first-block\", which needs none"
)


def teacache_set(arch: DitArchitecture, family: str, requested: str = "auto") -> str:
    """The published set for this DiT: detected from its architecture; the family name (or an
    explicit ``requested`` set) only settles what weights cannot tell, I2V 480p against 720p."""
    if arch.experts > 1 or arch.model_type == "ti2v" or family.startswith("wan2.2") or (
        arch.model_type == "i2v" and not arch.clip
    ):
        raise ModelInputError(
            f"step cache: TeaCache has no published coefficients for Wan2.2 ({family or arch}); the "
            f"Wan2.1 sets do not describe its time embedding; {CALIBRATE_HINT}"
        )
    matching = [name for name, a in PUBLISHED_ARCHITECTURES.items() if attrs.evolve(arch, experts=1) == a]
    if requested != "auto":
        if requested not in PUBLISHED_ARCHITECTURES:
            raise ModelInputError(
                f"step cache: coefficients = {requested!r} is not a published set; choose one of "
                f"{sorted(PUBLISHED_ARCHITECTURES)}, \"auto\" or \"calibrated\""
            )
        if requested not in matching:
            raise ModelInputError(
                f"step cache: coefficients = {requested!r} were fitted on "
                f"{PUBLISHED_ARCHITECTURES[requested]}, but this DiT is {arch}; {CALIBRATE_HINT}"
            )
        return requested
    if not matching:
        raise ModelInputError(f"step cache: TeaCache has no published coefficients for {arch}; {CALIBRATE_HINT}")
    if len(matching) == 1:
        return matching[0]
    if family in matching:
        return family
    raise ModelInputError(
        f"step cache: the weights of {arch} cannot tell 480p from 720p training; set coefficients "
        f"to one of {matching}"
    )


def teacache_plan(rule: TeaCacheRule, signals: Sequence[Signals], start: int = 0, stop: int | None = None) -> CachePlan:
    """The steps ``rule`` computes over [start, stop), simulated with the decision code the sampler
    runs, on the signals of every schedule step (``wanflow.models.dit_cache.time_signals``)."""
    stop = len(signals) if stop is None else stop
    state = BranchState("plan", start)
    computed = [s for s in range(start, stop) if rule.decide(state, s, start, len(signals) - 1, signals[s])]
    return CachePlan(rule.threshold, tuple(computed), start, stop)


def solve_threshold(
    coefficients: Sequence[float], mode: str, signals: Sequence[Signals], target: float,
    start: int = 0, stop: int | None = None,
) -> CachePlan:
    """The smallest threshold whose plan computes at most (stop − start)/target steps, or, when no
    threshold gets there (the forced steps bound it), the one that computes fewest."""
    stop = len(signals) if stop is None else stop
    probe = TeaCacheRule(tuple(coefficients), 0.0, mode)
    last = len(signals) - 1
    forced = [s == start or probe.forced(s, start, last) for s in range(start, stop)]
    signal = (lambda s: signals[s].e) if mode == "e" else (lambda s: signals[s].e0)
    changes = [0.0 if f else probe.change(signal(s), signal(s - 1))
               for s, f in zip(range(start, stop), forced)]
    simulate = functools.partial(_computed_count, forced, changes)
    thresholds = _candidate_thresholds(forced, changes)
    enough = (t for t in thresholds if simulate(t) * target <= (stop - start) + 1e-9)
    threshold = next(enough, None)
    if threshold is None:
        threshold = min(thresholds, key=lambda t: (simulate(t), t))
    plan = teacache_plan(TeaCacheRule(tuple(coefficients), threshold, mode), signals, start, stop)
    if len(plan.computed) != simulate(threshold):  # the solver and the sampler must agree exactly
        raise RuntimeError("teacache: the solved plan differs from the rule's own simulation")
    return plan


def _computed_count(forced: Sequence[bool], changes: Sequence[float], threshold: float) -> int:
    """How many steps TeaCache's accumulator computes at ``threshold`` (same float operations)."""
    acc, count = 0.0, 0
    for is_forced, change in zip(forced, changes):
        if not is_forced:
            acc += change
            if threshold > 0 and acc < threshold:
                continue
        acc, count = 0.0, count + 1
    return count


def _candidate_thresholds(forced: Sequence[bool], changes: Sequence[float]) -> list[float]:
    """One threshold inside every interval on which the plan is constant, ascending.

    The accumulator only ever holds a sum of consecutive changes after a reset; the plan changes
    only where the threshold crosses one of those sums, so midpoints between them cover all plans
    (and sit as far as possible from a float tie).
    """
    sums = set()
    for i in range(len(changes)):
        acc = 0.0
        for j in range(i + 1, len(changes)):
            if forced[j]:
                break
            acc += changes[j]
            sums.add(acc)
    cuts = sorted(s for s in sums if s > 0)
    if not cuts:
        return [1.0]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(cuts)]
    return [cuts[0] / 2, *mids, cuts[-1] * 2]
