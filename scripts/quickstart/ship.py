"""Put trained quickstart weights where the ``wanflow-tiny`` family reads them (wanflow/assets/wanflow-tiny).

    python -m scripts.quickstart.ship --dit runs/train-quickstart/<run>/outputs/dit.safetensors
    python -m scripts.quickstart.ship --family FOLDER      # its text_encoder/ and vae/ (build_family's output)

The DiT a training run exports holds the trained weights under the official keys in the training
dtype; shipped, every floating tensor is cast to bf16 (``files.SHIP_DTYPE``), keys unchanged, and
the DiT's ``config.json`` is the one of the folder training started from (training changes no shape).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from scripts.quickstart.build_family import ASSETS, TEXT_ENCODER_FILE, VAE_FILE
from scripts.quickstart.files import save_weights

DIT_FILE = Path("dit") / "diffusion_pytorch_model.safetensors"
#: Where recipes/train-quickstart.toml starts from (``init_dit``'s output).
INIT_CONFIG = Path("recipes/data/quickstart-init/dit/config.json")


def ship_dit(exported: Path, config: Path = INIT_CONFIG, assets: Path = ASSETS) -> list[Path]:
    """The exported DiT as the family's bf16 DiT file, beside ``config``; returns both paths."""
    from safetensors.torch import load_file

    weights = save_weights(load_file(str(exported)), assets / DIT_FILE)
    return [weights, Path(shutil.copyfile(config, assets / "dit" / "config.json"))]


def ship_family(folder: Path, assets: Path = ASSETS) -> list[Path]:
    """The text encoder and VAE files of a built family folder, copied byte for byte."""
    out = []
    for name in (TEXT_ENCODER_FILE, VAE_FILE):
        (assets / name).parent.mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copyfile(folder / name, assets / name)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", type=Path, help="a training run's exported dit.safetensors")
    ap.add_argument("--config", type=Path, default=INIT_CONFIG, help="the DiT's config.json (default: %(default)s)")
    ap.add_argument("--family", type=Path, help="a family folder with trained text_encoder/ and vae/")
    args = ap.parse_args(argv)
    if not args.dit and not args.family:
        ap.error("give --dit and/or --family")
    written = (ship_family(args.family) if args.family else []) + (ship_dit(args.dit, args.config) if args.dit else [])
    for path in written:
        sys.stdout.write(f"{path.stat().st_size:>10}  {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
