"""Start-up hook of the workers of the sharded-training tests: accelerate's FSDP path over gloo.

accelerate (1.x) turns FSDP on only for GPU runs: a CPU worker launched for FSDP becomes
``MULTI_CPU`` (docs/training-distributed.md). The tests put this folder on the workers'
``PYTHONPATH``; Python imports ``sitecustomize`` at start-up, and in a process that
``accelerate launch`` started for FSDP (``ACCELERATE_USE_FSDP``) this makes the CPU state FSDP
with the plugin accelerate built from the launcher's configuration. Everything after it is
accelerate's own FSDP2 path (``fully_shard`` of the configured block class, its gathered state
dicts, ``save_state``/``load_state``), run on CPU tensors.
"""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    from accelerate import state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__

    def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            _state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    _state.AcceleratorState.__init__ = _fsdp_on_cpu
