"""The train step's peak with the frozen base's last blocks streamed (a LoRA's base, ``stream``/``disk``).

No torch. A streamed block's weights leave the resident part: they wait in host memory (the
``host`` tier, held for the whole run) or in the mapped checkpoint (``disk``), and come in one
block at a time (``wanflow.memory.train_placement``). On the compute device at most
``IN_FLIGHT`` of them are present: the block computing and the next one arriving; in backward
the block whose backward runs keeps its fetched weights (autograd holds them) while the block
before it arrives. With A14B's two experts only the running one holds any (each drops its blocks
after backward). Activations, adapters and optimizer state are unchanged: the LoRA's factors
stay resident.

A device run streaming from disk stages each block in pinned host memory on its way
(``IN_FLIGHT`` blocks); a CPU run's ``host`` tier is the weights themselves (nothing saved),
its ``disk`` tier leaves ``IN_FLIGHT`` blocks in memory of the streamed ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from wanflow.memory.train_estimate import TrainPeak

#: Streamed blocks present at once: the one computing (or whose backward runs) and the next arriving.
IN_FLIGHT = 2


def streamed_peak(peak: TrainPeak, blocks: Sequence[Sequence[int]], streamed: int, tier: str, *,
                  device_run: bool) -> TrainPeak:
    """``peak`` (every block resident) with the last ``streamed`` blocks of each DiT streamed.

    ``blocks``: each trained DiT's block bytes as stored, in execution order; ``tier``: "host" or
    "disk"."""
    if streamed <= 0:
        return peak
    away = sum(sum(b[-streamed:]) for b in blocks)
    flight = IN_FLIGHT * max(max(b[-streamed:]) for b in blocks)
    flight = min(flight, away)
    if device_run:
        host = peak.host_bytes + (away if tier == "host" else flight)
        return attrs.evolve(peak, device_bytes=peak.device_bytes - away + flight, host_bytes=host,
                            weights=peak.weights - away + flight)
    saved = away - flight if tier == "disk" else 0
    return attrs.evolve(peak, host_bytes=peak.host_bytes - saved, weights=peak.weights - saved)


def stream_tiers(layers: int, streamed: int, tier: str) -> tuple[str, ...]:
    """Each block's tier: the first ones resident, the last ``streamed`` in ``tier``."""
    return ("device",) * (layers - streamed) + (tier,) * streamed
