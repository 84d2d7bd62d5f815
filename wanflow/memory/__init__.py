"""Memory policy: plan where every model's weights live before anything loads, then keep to it.

`planner` decides (pure numbers, no torch): each component's placement and each DiT block's
tier, and the predicted peak device and host bytes of every step, or a refusal with the numbers
and the cheapest change that would fit. `sizes` and `estimates` give it its inputs (checkpoint
headers, activation formulas). `placement` is the one module that moves DiT weights at run time:
block by block from pinned host memory or from the memory-mapped checkpoint file.
"""
