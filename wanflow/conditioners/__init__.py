"""Conditioning as data: the kinds of conditioner a family may declare, and the declaration.

A conditioner turns some of a recipe's ``[inputs]`` into tensors (a cached step) and hands them
to the DiT (one small function): extra input channels, extra context tokens, DiT extras,
per-token timesteps, a latent clamp, the starting latent, latent frames dropped after sampling.
This package is the torch-free half: which kinds exist, what each reads and hands over, and
which options it takes. The steps that compute them live in ``wanflow.steps.cond_*``.
"""

from wanflow.conditioners.declaration import Conditioner, conditioner
from wanflow.conditioners.kinds import HANDS, KINDS, Kind, Option, kind_named, kind_of_role, starts_from_latent

__all__ = ["HANDS", "KINDS", "Conditioner", "Kind", "Option", "conditioner", "kind_named", "kind_of_role",
           "starts_from_latent"]
