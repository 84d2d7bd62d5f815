"""Load a Wan VAE (official `.pth`/safetensors or diffusers layout, a file or a state dict), strictly."""

from __future__ import annotations

from typing import Literal

import attrs
import structlog
import torch

from wanflow.errors import ModelLoadError
from wanflow.models import signature
from wanflow.models.checkpoint_files import Checkpoint, open_weights
from wanflow.models.loading import build_on_meta, load_state_into
from wanflow.models.vae.autoencoder import VideoVAE
from wanflow.models.vae.config import CONFIGS, VAEConfig
from wanflow.models.vae.keys import apply_stages, diffusers_to_official

log = structlog.get_logger(__name__)

_LABEL = {"wan2.1": "Wan2.1 VAE (z_dim 16, 8x spatial)", "wan2.2": "Wan2.2 VAE (z_dim 48, 16x spatial)"}


def load_vae(
    checkpoint: Checkpoint,
    expected: Literal["wan2.1", "wan2.2"] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    config: VAEConfig | None = None,
) -> VideoVAE:
    """A ready VideoVAE from a file or a state dict: recognised by its keys, checked against
    `expected`, loaded strictly, each tensor cast on its way to `device`.

    `config` defaults to the released architecture of the recognised version, with the base
    widths read off the tensors (so smaller, non-released files load too); pass one to insist.
    """
    opened = open_weights(checkpoint)
    source, state = opened.source, opened.state
    found = signature.identify(state)
    if found.kind != "vae":
        want = _LABEL[expected] if expected else "a Wan VAE"
        raise ModelLoadError(
            f"{source}: expected {want} checkpoint, but this is {found.describe()}. "
            "Point the VAE at the right file (Wan2.1_VAE.pth or Wan2.2_VAE.pth)."
        )
    _check_version(source, found, expected, config)
    if found.layout == "diffusers":  # the key tables depend only on block counts, not widths
        state = apply_stages(state, diffusers_to_official(config or CONFIGS[found.variant]))
    config = config or config_from_state(state, found.variant)
    vae = build_on_meta(lambda: VideoVAE(config))
    load_state_into(vae, state, source=source, expected=_LABEL[config.version], dtype=dtype, device=device,
                    borrowed=opened.borrowed)
    log.debug("vae_loaded", source=source, version=config.version, layout=found.layout, dtype=str(dtype))
    return vae.eval().requires_grad_(False)


def config_from_state(state: dict, version: str) -> VAEConfig:
    """The released config of `version` with its encoder/decoder base widths read off the tensors.

    Missing keys leave the released widths: strict loading then names what the file lacks.
    """
    base = CONFIGS[version]
    try:
        dim = state["encoder.conv1.weight"].shape[0]
        head = state["decoder.head.2.weight"].shape[1]
    except KeyError:
        return base
    if (dim, head) == (base.dim, base.decoder_dim):
        return base
    return attrs.evolve(base, dim=dim, dec_dim=None if head == dim else head)


def _check_version(source: str, found: signature.CheckpointSignature, expected: str | None,
                   config: VAEConfig | None) -> None:
    """The file's VAE version must be the one the caller (recipe family or config) asked for."""
    for wanted, by in ((expected, "the model family"), (config.version if config else None, "config")):
        if wanted is not None and wanted != found.variant:
            raise ModelLoadError(
                f"{source}: {by} needs the {_LABEL[wanted]}, but this file is {found.describe()}. "
                f"Use the {wanted} VAE file (Wan{wanted[3:]}_VAE.pth) or a family built for "
                f"{found.variant}."
            )
