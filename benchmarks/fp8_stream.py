"""fp8-stored DiT blocks streamed against bf16 blocks streamed and the fp8 DiT whole: time per forward.

Writes (or reuses) a DiT of the real Wan2.1 T2V-14B block shapes with random bf16 weights
(``memory_14b.write_checkpoint``, ``--layers`` blocks) and its scaled-fp8 conversion
(``fp8_convert.convert_to_fp8``). Then, in one process, each of these loads and runs forwards
(bf16 activations; the prompt's keys and values prepared once; the median of ``--repeats``
forwards after one untimed):

- ``fp8 whole``: ``storage="fp8"``, every block on the device;
- ``fp8 streamed (scaled file)``: every block streamed in fp8, read as it is from the scaled-fp8 file;
- ``fp8 streamed (bf16 file)``: every block streamed in fp8 from the bf16 file (on the disk tier
  quantised at each read, on the reader thread);
- ``bf16 streamed``: every block streamed in bf16 from the bf16 file.

The tier is ``disk`` on the CPU (a CPU run has no host tier apart from RAM) and ``host`` on CUDA
(``--tier disk`` streams from the file there too). It prints each forward's time, its ratio to
the fp8 whole forward, whether the fp8 outputs are bit-identical to the whole fp8 model's, and on
CUDA the peak device memory of each.

    python benchmarks/fp8_stream.py --device cpu --layers 2 --size 64x64x5
    python benchmarks/fp8_stream.py --device cuda --layers 40 --size 480x832x81   # a 24+ GB host RAM
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_stream  # noqa: E402  (beside this script)
import memory_14b  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/wanflow-bench/fp8-stream"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", default="64x64x5", help="HxWxF pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tier", choices=("host", "disk"), default=None, help="default: disk on CPU, host on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from wanflow.memory.streamed import load_placed_dit
    from wanflow.models.dit_loader import load_dit
    from wanflow.models.fp8_convert import convert_to_fp8

    memory_14b.LAYERS = args.layers
    cfg = memory_14b.config()
    bf16_file = args.folder / f"dit-{args.layers}.safetensors"
    scaled_dir = args.folder / f"scaled-{args.layers}"
    if not bf16_file.exists():
        bf16_file.parent.mkdir(parents=True, exist_ok=True)
        memory_14b.write_checkpoint(bf16_file, args.device)
    if not scaled_dir.exists():
        convert_to_fp8(bf16_file, scaled_dir)
    scaled_file = scaled_dir / bf16_file.name

    cuda = args.device.startswith("cuda")
    tier = args.tier or ("host" if cuda else "disk")
    h, w, f = (int(v) for v in args.size.split("x"))
    latent = (1, cfg.in_dim, (f - 1) // 4 + 1, h // 8, w // 8)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(latent, generator=gen).bfloat16().to(args.device)
    t = torch.tensor([999.0], device=args.device)
    context = torch.randn(1, memory_14b.TEXT_TOKENS, cfg.text_dim, generator=gen).bfloat16().to(args.device)
    tokens = latent[2] * latent[3] * latent[4] // 4
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"Wan 14B blocks x{cfg.num_layers}, {args.size} ({tokens} tokens), bf16 activations, {name}, "
          f"torch {torch.__version__}; streamed blocks on the {tier} tier; median of {args.repeats} after 1",
          flush=True)

    tiers = (tier,) * cfg.num_layers
    runs = {
        "fp8 whole": lambda: load_dit(bf16_file, cfg, torch.bfloat16, args.device, storage="fp8"),
        "fp8 streamed (scaled file)": lambda: load_placed_dit([scaled_file], cfg, tiers, torch.bfloat16,
                                                              args.device, storage="fp8")[0],
        "fp8 streamed (bf16 file)": lambda: load_placed_dit([bf16_file], cfg, tiers, torch.bfloat16, args.device,
                                                            storage="fp8")[0],
        "bf16 streamed": lambda: load_placed_dit([bf16_file], cfg, tiers, torch.bfloat16, args.device)[0],
    }
    times, outputs = {}, {}
    for label, load in runs.items():
        gpu_stream.peak_gib(args.device)
        start = time.perf_counter()
        model = load().eval().requires_grad_(False)
        loaded = time.perf_counter() - start
        with torch.inference_mode():
            prepared = model.prepare_context(context)
        times[label], y = gpu_stream.timed_forwards(model, (x, t, prepared), args.device, args.repeats)
        peak = gpu_stream.peak_gib(args.device)
        outputs[label] = y.cpu()
        del model, prepared
        torch.cuda.empty_cache() if cuda else None
        same = "" if label.startswith("bf16") else (
            "; output bit-identical to fp8 whole" if torch.equal(outputs[label], outputs["fp8 whole"])
            else "; output DIFFERS from fp8 whole")
        memory = "" if peak is None else f", peak {peak:.2f} GiB"
        print(f"  {label:28s} load {loaded:6.1f} s, forward {times[label]:8.3f} s "
              f"({times[label] / times['fp8 whole']:.2f}x fp8 whole){memory}{same}", flush=True)
    print(f"fp8 streamed / bf16 streamed: {times['fp8 streamed (scaled file)'] / times['bf16 streamed']:.2f}x "
          f"(scaled file), {times['fp8 streamed (bf16 file)'] / times['bf16 streamed']:.2f}x (bf16 file)", flush=True)


if __name__ == "__main__":
    main()
