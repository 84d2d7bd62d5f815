"""EasyCache: skip the whole DiT call while its predicted change stays small; nothing calibrated.

EasyCache (Zhou et al. 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via
Runtime-Adaptive Caching", arXiv:2507.02860; the authors' EasyCache4Wan2.1) measures at run time
how much the DiT's output moves per unit of input movement and skips while the change that this
rate predicts, summed since the last computed step, stays under a threshold:

- ``k = mean|y_c − y_c'| / mean|x_c − x_c'|`` between the last two *computed* steps c' < c
  (x the DiT's raw input latent, y its output);
- at a later step s, ``acc += k · mean|x_s − x_{s−1}| / mean|y_c|`` (x_{s−1}: the previous call's
  input, computed or not); skip while ``acc < threshold``, else compute and reset ``acc``;
- a skipped call returns ``x_s + (y_c − x_c)``: the last computed "transformation vector" added to
  the current input, so embedding, blocks and head are all skipped.

The conditional pass decides and the unconditional pass of the same step follows (each adds its
own vector); a batched pair ("pair") decides from its conditional rows. The first ``retention``
fraction of the schedule and its last step are always computed (EasyCache4Wan2.1 computes the
first 10 of 50 steps, 0.2, and the last). Decisions depend on the latent, so no plan exists
before sampling and a target speed-up cannot be solved for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.step_cache import Signals, StepCache

#: Branches that follow another branch's decision of the same step, instead of deciding.
FOLLOWS = {"uncond": "cond"}
#: The batched guidance branch: rows [cond; uncond], decided from its conditional half.
PAIRED = "pair"


def mean_abs(x: torch.Tensor) -> float:
    """mean|x| in fp32, as a Python float (decisions are plain float arithmetic)."""
    return x.float().abs().mean().item()


def ratio(num: float, den: float) -> float:
    """num / den, infinite where den is 0 (an unknown rate then forces a computation)."""
    return num / den if den > 0 else math.inf


@attrs.frozen
class EasyCacheRule:
    """EasyCache4Wan2.1's decision, as plain values (all of them change the numbers)."""

    threshold: float  # the authors' default 0.05; "0.1 for 2.0×, 0.2 for 3.0×"
    retention: float = 0.2  # the authors compute the first 10 of 50 steps
    uses_first_block = False

    def forced(self, step: int, last: int) -> bool:
        """The retained first steps of the schedule and its last step always compute."""
        retained = math.floor((last + 1) * self.retention + 1e-9)
        return step < retained or step == last

    def predicted(self, k: float, x: torch.Tensor, before: torch.Tensor, output: torch.Tensor) -> float:
        """k · mean|x − x_prev| / mean|y at the last computed step|: the change this step adds."""
        return k * ratio(mean_abs(x - before), mean_abs(output))


@attrs.define
class Track:
    """One branch's EasyCache state (besides the call count the ``StepCache`` keeps)."""

    acc: float = 0.0  # predicted change accumulated since the last computed step
    k: float = math.nan  # output change per input change between the last two computed steps
    decided: int = -1  # the step of the last decision this branch made (or followed)
    compute: bool = True  # that decision
    before: torch.Tensor | None = None  # the previous call's input (deciding branches)
    x_done: torch.Tensor | None = None  # the input at the last computed step
    y_done: torch.Tensor | None = None  # the output at the last computed step (fp32)

    def vector(self, device: torch.device) -> torch.Tensor:
        """y − x at the last computed step: what a skipped call adds to its input (on
        ``device``: a state restored from a checkpoint comes back on the CPU)."""
        return self.y_done.to(device) - self.x_done.to(device).float()  # type: ignore[union-attr]


class EasyCache(StepCache):
    """A step cache that stands in for whole DiT calls (``reused_output``), deciding from the
    raw input latent and the last computed outputs."""

    rule: EasyCacheRule

    def __init__(self, rule: EasyCacheRule, timesteps: Sequence[float] | torch.Tensor,
                 start: int = 0, stop: int | None = None):
        super().__init__(rule, timesteps, start, stop)  # type: ignore[arg-type]
        self.tracks: dict[str, Track] = {}
        self._pending: dict[str, tuple[int, torch.Tensor]] = {}  # branch -> (step, input) of a call

    def track(self, branch: str) -> Track:
        if branch not in self.tracks:
            self.tracks[branch] = Track()
        return self.tracks[branch]

    def reused_output(self, step: int, branch: str, x: torch.Tensor) -> torch.Tensor | None:
        """The call's output without running the DiT (``x + vector``), or None: run it."""
        track = self.track(branch)
        compute = self._follow(step, branch) if branch in FOLLOWS else self._decide(step, branch, track, x)
        if not compute and track.y_done is None:
            compute = True  # nothing cached for this branch yet (EasyCache does the same)
        track.decided, track.compute = step, compute
        if compute:
            self._pending[branch] = (step, x.detach().clone())
            return None
        return x.float() + track.vector(x.device)

    def _decide(self, step: int, branch: str, track: Track, x: torch.Tensor) -> bool:
        """The conditional decision; remembers x as the next call's ``before``."""
        now = _lead(branch, x)
        before, track.before = track.before, now.detach().clone()
        if self.rule.forced(step, self.last) or before is None or track.y_done is None or math.isnan(track.k):
            track.acc = 0.0
            return True
        output = _lead(branch, track.y_done).to(x.device)
        track.acc += self.rule.predicted(track.k, now, before.to(x.device), output)
        if track.acc < self.rule.threshold:
            return False
        track.acc = 0.0
        return True

    def _follow(self, step: int, branch: str) -> bool:
        leader = self.tracks.get(FOLLOWS[branch])
        if leader is None or leader.decided != step:
            raise ModelInputError(
                f"easycache ({branch}): step {step} has no decision of the {FOLLOWS[branch]!r} pass; "
                "EasyCache decides on the conditional pass, which must run first in every step"
            )
        return leader.compute

    def decide(self, step: int, branch: str, signals: Signals) -> bool:
        """Asked by the model side once it runs the blocks: the decision was made on the raw input."""
        pending = self._pending.get(branch)
        if pending is None or pending[0] != step:
            raise RuntimeError(
                f"easycache ({branch}): the model side ran step {step} without asking reused_output "
                "first; EasyCache needs the DiT's raw input before the forward"
            )
        self.state(branch).computed.append(step)
        return True

    def finish(self, step: int, branch: str, residual: torch.Tensor | None, output: torch.Tensor) -> None:
        """After a computed call: the rate k between this and the last computed step, and the
        new transformation vector's ends."""
        _, x = self._pending.pop(branch)
        track = self.track(branch)
        y = output.detach().float().clone()  # the solver may keep the returned tensor
        if branch not in FOLLOWS and track.y_done is not None:
            y_done, x_done = track.y_done.to(y.device), track.x_done.to(x.device)  # type: ignore[union-attr]
            dy = mean_abs(_lead(branch, y) - _lead(branch, y_done))
            track.k = ratio(dy, mean_abs(_lead(branch, x) - _lead(branch, x_done)))
        track.x_done, track.y_done = x, y

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The call counts (``StepCache``) and every branch's track, as named tensors."""
        out = super().state_tensors()
        for name, t in self.tracks.items():
            scalars = [t.acc, t.k, t.decided, float(t.compute)]
            out[f"{name}.easy"] = torch.tensor(scalars, dtype=torch.float64)
            for field in ("before", "x_done", "y_done"):
                if getattr(t, field) is not None:
                    out[f"{name}.{field}"] = getattr(t, field).contiguous()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` wrote (replacing every branch's state)."""
        tracks = {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".easy")}
        super().load_state_tensors(tensors)
        self.tracks, self._pending = {}, {}
        for name in tracks:
            acc, k, decided, compute = tensors[f"{name}.easy"].tolist()
            self.tracks[name] = Track(acc, k, int(decided), bool(compute), tensors.get(f"{name}.before"),
                                      tensors.get(f"{name}.x_done"), tensors.get(f"{name}.y_done"))


def _lead(branch: str, x: torch.Tensor) -> torch.Tensor:
    """The rows a decision is measured on: the conditional half of a batched pair, else all."""
    return x[: x.shape[0] // 2] if branch == PAIRED else x
