"""The export of a fully fine-tuned Video-As-Prompt DiT: the release's layout, trained reference stream.

Full fine-tuning of Video-As-Prompt trains the reference stream alone (the authors' MoT training
and DiffSynth's ``--trainable_models vap``), so the train step keeps only those tensors. This
step writes the whole DiT as the authors save a trained model (``save_pretrained`` of their
``WanTransformer3DMOTModel``): every tensor under the release's diffusers names, the main stream
copied unchanged from the base's files, the reference stream (``*_mot_ref``) the trained one.
One file replaces the release's ``transformer/`` shards wherever those load: ``[models.dit]``
of a generation, the authors' code, DiffSynth (which recognises the release by its names and
shapes). Its header holds the release's config.json (``vap_loader.CONFIG_ENTRY``), so the file
alone says its head count and joined blocks.

Why not DiffSynth's partial file (the reference stream alone, renumbered 0..9): only DiffSynth's
own ``pipe.vap.load_state_dict`` reads that, after loading the release; the whole DiT in the
release's names loads everywhere the release does, at the cost of the frozen main stream's bytes.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from wanflow.families.vap import FULL_EXPORT

#: What the export reads besides its inputs: the number of steps goes into its header.
READS = ("train.steps",)


@attrs.frozen
class ExportVapDiT:
    """The base Video-As-Prompt DiT with the trained reference stream, in the release's layout."""

    role: str
    files: int  # how many weight files the role has (``<role>.<i>`` weights)
    header: tuple[tuple[str, str], ...]  # base model, recipe digest, … (in the file, so keyed)
    layout: str = FULL_EXPORT
    kind: str = "export"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = READS

    def run(self, ctx: Any) -> bytes:
        from wanflow.memory.pool import weight_files

        trained = ctx.input("trained")
        prefix = f"{self.role}/"
        reference = {k.removeprefix(prefix): v for k, v in trained.items() if k.startswith(prefix)}
        base = weight_files([ctx.weight(f"{self.role}.{i}") for i in range(self.files)])
        return released_bytes(base, reference, dict(self.header) | {
            "wanflow.method": "full", "wanflow.steps": str(ctx.params["train.steps"])})


def released_bytes(base: list[Any], reference: dict[str, Any], header: dict[str, str]) -> bytes:
    """The base DiT's files with ``reference`` (wanflow-named ``mot.*`` tensors) put in place of
    its reference stream, as safetensors bytes under the release's names."""
    from pathlib import Path

    from wanflow.errors import ModelLoadError
    from wanflow.models import vap_keys
    from wanflow.models.checkpoint_files import merged_shards
    from wanflow.models.stable_safetensors import save_stable
    from wanflow.models.vap_config import MOT_PREFIX
    from wanflow.models.vap_loader import CONFIG_ENTRY, released_config, wanflow_state

    source = ", ".join(str(f) for f in base)
    state = wanflow_state(merged_shards(base), source)
    strays = sorted(k for k in reference if not k.startswith(MOT_PREFIX) or k not in state)
    if strays:
        raise ModelLoadError(f"{source}: the trained tensors {strays[:4]} are not this DiT's reference stream; "
                             "train again from this base.")
    for name, tensor in reference.items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise ModelLoadError(f"{source}: trained {name} is {tuple(tensor.shape)}, the base's is "
                                 f"{tuple(state[name].shape)}; train again from this base.")
    untrained = sorted(k for k in state if k.startswith(MOT_PREFIX) and k not in reference)
    if untrained:
        raise ModelLoadError(f"the training kept no {untrained[:4]}: its reference stream is incomplete.")
    merged = {k: reference.get(k, v) for k, v in state.items()}
    config = released_config(Path(base[0]))
    if config is not None:
        header = header | {CONFIG_ENTRY: json.dumps(config, sort_keys=True)}
    tensors = {k: v.contiguous() for k, v in sorted(vap_keys.to_diffusers(merged).items())}
    return save_stable(tensors, metadata=header)
