"""Tiny VACE releases in their repositories' real file layouts, under a models root.

``write_vace_root(root)`` lays out the four VACE repositories with their real file names:
iic/VACE-Wan2.1-1.3B-Preview and Wan-AI/Wan2.1-VACE-1.3B one ``diffusion_pytorch_model.safetensors``
(the DiT and its ``vace_*`` keys together), Wan-AI/Wan2.1-VACE-14B seven shards with their index,
PAI/Wan2.2-VACE-Fun-A14B one DiT ∪ ``vace_*`` file in each of ``high_noise_model/`` and
``low_noise_model/``; each beside its ``config.json`` (``model_type`` "vace", ``vace_layers``,
``vace_in_dim``), ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/`` and ``Wan2.1_VAE.pth``.
The writers are those of the official layouts (``_layout``).
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from tests.e2e._layout import _link, tiny, write_dit, write_shared

#: The tiny VACE DiT: the tiny T2V DiT (2 blocks) with a VACE block after each.
VACE_LAYERS = (0, 1)


@attrs.frozen
class VaceRepo:
    org: str
    name: str
    shards: int = 1
    experts: tuple[str, ...] = ("",)  # sub-folders holding a DiT each

    @property
    def path(self) -> str:
        return f"{self.org}/{self.name}"


REPOS = {
    "wan2.1-vace-1.3b-preview": VaceRepo("iic", "VACE-Wan2.1-1.3B-Preview"),
    "wan2.1-vace-1.3b": VaceRepo("Wan-AI", "Wan2.1-VACE-1.3B"),
    "wan2.1-vace-14b": VaceRepo("Wan-AI", "Wan2.1-VACE-14B", shards=7),
    "wan2.2-vace-fun-a14b": VaceRepo("PAI", "Wan2.2-VACE-Fun-A14B", experts=("high_noise_model", "low_noise_model")),
}


def vace_config():
    return attrs.evolve(tiny.tiny_dit_config("t2v"), vace_layers=VACE_LAYERS)


def write_vace_repo(folder: Path, repo: VaceRepo, shared: Path) -> None:
    cfg = vace_config()
    for i, sub in enumerate(repo.experts):
        where = folder / sub if sub else folder
        write_dit(where, cfg, seed=20 + i, shards=repo.shards)
        config = {**tiny.dit_config_json(cfg), "_class_name": "VaceWanModel", "model_type": "vace",
                  "vace_layers": list(VACE_LAYERS), "vace_in_dim": cfg.vace_in_dim}
        (where / "config.json").write_text(json.dumps(config, indent=2))
    for name, src in {"models_t5_umt5-xxl-enc-bf16.pth": "umt5.pth", "google/umt5-xxl": "tokenizer",
                      "Wan2.1_VAE.pth": "wan2.1.pth"}.items():
        _link(shared / src, folder / name)


def write_vace_root(root: Path) -> Path:
    write_shared(root / ".shared")
    for repo in REPOS.values():
        write_vace_repo(root / repo.path, repo, root / ".shared")
    return root
