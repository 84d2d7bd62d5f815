"""What wanflow writes to run a training step in several processes through accelerate.

A distributed run is the single-process loop started ``processes`` times by ``accelerate launch``
(torchrun underneath). wanflow writes the configuration itself, from the recipe, so that no
``accelerate config`` questionnaire or hand-kept YAML stands between a recipe and its run:

- ``accelerate.yaml``: the engine (DDP, FSDP or DeepSpeed), the process count, a free port and
  the mixed precision;
- ``deepspeed.json`` for ZeRO-2/3: the stage, what is offloaded to the CPU, bf16/fp16, the
  micro-batch and accumulation; the YAML points at it, and carries ``zero3_init_flag`` for
  ZeRO-3 (DiffSynth's ZeRO-3 recipe: parameters initialised on the CPU, then partitioned).

``accelerate launch`` only starts several processes through torchrun for a GPU engine type, so the
YAML always names one (``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``); on a machine without CUDA the
workers ask accelerate for the CPU, where it runs DDP over gloo. FSDP and DeepSpeed need CUDA:
accelerate turns FSDP on only for GPU-type runs (on the CPU it silently runs DDP instead, which
the worker refuses), and DeepSpeed's ZeRO optimizers are CUDA code. Torch-free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: distribution -> accelerate's distributed_type for ``accelerate launch``.
ENGINE_TYPES = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED"}
#: distributions that run only with CUDA (see the module docstring for why).
NEEDS_CUDA = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


def mixed_precision(dtype_name: str, distribution: str) -> str:
    """accelerate's mixed_precision: "no" for DDP/FSDP, whose loop sets every dtype itself (a frozen
    base in the run's dtype, fp32 adapters or masters); DeepSpeed keeps fp32 masters of a bf16
    or fp16 model, so it is told the run's dtype."""
    if not distribution.startswith("deepspeed"):
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype_name, "no")


def accelerate_config(distribution: str, processes: int, dtype_name: str,
                      deepspeed_file: Path | None = None, shard_unit: str = "") -> dict[str, Any]:
    """The accelerate configuration (as written to ``accelerate.yaml``). ``shard_unit``: for FSDP,
    the class name of the trained DiT's transformer block (``memory.dit_variants.shard_unit``),
    the unit FSDP shards and gathers one at a time."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": ENGINE_TYPES[distribution],
        "num_processes": processes,
        "num_machines": 1,
        "machine_rank": 0,
        "main_process_port": 0,  # accelerate picks a free port: runs side by side never collide
        "mixed_precision": mixed_precision(dtype_name, distribution),
        "use_cpu": False,  # see the module docstring: CPU workers are chosen inside each worker
    }
    if distribution == "fsdp":
        assert shard_unit, "FSDP wraps the DiT's transformer blocks: name their class"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": shard_unit,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # checkpoints and outputs gather whole tensors
            "fsdp_offload_params": False,
            "fsdp_cpu_ram_efficient_loading": False,  # every rank loads the DiT the same way
            "fsdp_activation_checkpointing": False,  # the DiT checkpoints its own blocks
        }
    if distribution.startswith("deepspeed"):
        assert deepspeed_file is not None, "a DeepSpeed run writes its JSON first"
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "zero3_init_flag": distribution == "deepspeed-zero3",
        }
    return config


def deepspeed_config(distribution: str, batch_size: int, gradient_accumulation: int, max_grad_norm: float,
                     dtype_name: str) -> dict[str, Any]:
    """The DeepSpeed JSON: ZeRO-2 shards optimizer state and gradients and keeps the optimizer state
    on the CPU; ZeRO-3 also shards the parameters, kept on the CPU (DiffSynth's 14B recipes)."""
    stage = 3 if distribution == "deepspeed-zero3" else 2
    zero: dict[str, Any] = {"stage": stage, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                            "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # outputs gather whole tensors
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": gradient_accumulation,
        "gradient_clipping": max_grad_norm if max_grad_norm > 0 else 0.0,  # the loop never clips itself here
        "bf16": {"enabled": dtype_name == "bfloat16"},
        "fp16": {"enabled": dtype_name == "float16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the recipe's AdamW (or 8-bit AdamW, Prodigy) as built
        "steps_per_print": 10**9,  # wanflow logs its own progress
    }


def write_configs(folder: Path, params: dict[str, Any], dtype_name: str, shard_unit: str = "") -> Path:
    """Write ``accelerate.yaml`` (and ``deepspeed.json``) into ``folder``; returns the YAML's path.
    ``shard_unit``: the DiT's transformer block class (FSDP only)."""
    import yaml

    distribution, processes = params["train.distribution"], int(params["train.processes"])
    ds_file = None
    if distribution.startswith("deepspeed"):
        ds_file = folder / "deepspeed.json"
        ds = deepspeed_config(distribution, int(params["train.batch_size"]),
                              int(params["train.gradient_accumulation"]), float(params["train.max_grad_norm"]),
                              dtype_name)
        ds_file.write_text(json.dumps(ds, indent=2), encoding="utf-8")
    path = folder / "accelerate.yaml"
    config = accelerate_config(distribution, processes, dtype_name, ds_file, shard_unit)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def launch_command(config_file: Path, job: Path, module: str) -> list[str]:
    """``accelerate launch`` of ``python -m module job`` under this interpreter."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", module, str(job)]
