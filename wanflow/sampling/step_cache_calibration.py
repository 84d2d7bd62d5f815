"""Calibrating a step cache on the model itself, for DiTs without published values (Wan2.2).

Run the sampler uncached with a :class:`Calibration` as the cache (it never skips), once per
prompt (call ``new_run`` between them), then fit:

- TeaCache (Liu et al. 2024, §3.3; the authors' answer on how the Wan2.1 sets were made): pair, for
  every step after the first and every branch, the relative L1 change of the time signal with the
  relative L1 change of the DiT's output, and fit ``numpy.polyfit(x, y, 4)``.
- MagCache (MagCache4Wan2.1's ``magcache_calibration``): per step and branch, the mean over tokens
  of ‖r_t‖/‖r_{t−1}‖, r the block stack's residual; averaged over the runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.step_cache import BranchState, Signals, StepCache, relative_l1


class NeverSkip:
    """The rule of a calibration run: every step computes."""

    uses_first_block = False

    def decide(self, state: BranchState, step: int, start: int, last: int, signals: Signals) -> bool:
        return True


class Calibration(StepCache):
    """A cache that never skips and records what TeaCache and MagCache are fitted from."""

    def __init__(self, timesteps: Sequence[float] | torch.Tensor, start: int = 0, stop: int | None = None):
        super().__init__(NeverSkip(), timesteps, start, stop)  # type: ignore[arg-type]
        self.pairs: dict[str, list[tuple[float, float]]] = {"e": [], "e0": []}  # (signal, output) changes
        self.magnitudes: dict[tuple[str, int], list[float]] = {}  # (branch, step) -> ratios over runs
        self._last: dict[str, dict[str, torch.Tensor]] = {}  # branch -> previous e, e0, output, residual
        self._signals: dict[str, Signals] = {}

    def new_run(self) -> None:
        """Start the next prompt's run from the range's first step; the records are kept."""
        self.branches, self._last, self._signals = {}, {}, {}

    def decide(self, step: int, branch: str, signals: Signals) -> bool:
        self._signals[branch] = signals
        return super().decide(step, branch, signals)

    def finish(self, step: int, branch: str, residual: torch.Tensor | None, output: torch.Tensor) -> None:
        super().finish(step, branch, residual, output)
        signals, last = self._signals.pop(branch), self._last.get(branch)
        if last is not None:
            out_change = relative_l1(output, last["output"])
            self.pairs["e"].append((relative_l1(signals.e, last["e"]), out_change))
            self.pairs["e0"].append((relative_l1(signals.e0, last["e0"]), out_change))
            norms = residual.float().norm(dim=-1) / last["residual"].float().norm(dim=-1)  # (B, L)
            self.magnitudes.setdefault((branch, step), []).append(norms.mean().item())
        self._last[branch] = {"e": signals.e, "e0": signals.e0, "output": output, "residual": residual}

    def teacache_coefficients(self, mode: str = "e", degree: int = 4) -> tuple[float, ...]:
        """The least-squares polynomial (highest power first) from signal change to output change."""
        pairs = self.pairs[mode]
        if len(pairs) <= degree:
            raise ModelInputError(
                f"calibration: {len(pairs)} step pairs cannot fit a degree-{degree} polynomial; "
                "calibrate over more steps or prompts"
            )
        x, y = np.array(pairs, dtype=np.float64).T
        return tuple(float(c) for c in np.polyfit(x, y, degree))

    def magcache_ratios(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """(branch, γ per schedule step) pairs, γ = 1 where no earlier step exists, ready for
        ``StepCacheSettings.ratios``."""
        branches = sorted({branch for branch, _ in self.magnitudes})
        return tuple(
            (b, tuple(float(np.mean(self.magnitudes.get((b, s), [1.0]))) for s in range(len(self.timesteps))))
            for b in branches
        )
