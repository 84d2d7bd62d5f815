#!/usr/bin/env bash
# The GPU checks of the speed work in one command, sized for a short GPU loan (about 6 minutes):
# the CUDA paths' tests, then the 14B targets (benchmarks/gpu_targets.py: diffusers, every
# attention backend, compiled blocks, fp8 matmuls). PROFILE=1 adds the profile of one 14B forward
# and SMALL=1 the 1.3B targets. Figures go to $OUT (default /tmp/gpu-out). Packages the machine
# lacks travel as wheels in .whl/ (docs/speed.md, "Measuring on a GPU").
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"
timeout "${TESTS_S:-60}" python3 -m pytest -q -p no:cacheprovider -x tests/models/test_fp8_matmul.py \
  tests/models/test_attention_backends.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout "${BIG_S:-300}" python3 benchmarks/gpu_targets.py --config 14b --compile --json "$OUT/targets-14b.json" 2>&1 \
  | tee "$OUT/targets-14b.txt"
if [ "${PROFILE:-0}" = 1 ]; then
  timeout "${PROFILE_S:-90}" python3 -m benchmarks.dit_profile --config 14b --size 480x832x81 --device cuda \
    --dtype bf16 --attention cudnn 2>&1 | tee "$OUT/profile-14b.txt"
fi
if [ "${SMALL:-0}" = 1 ]; then
  timeout "${SMALL_S:-120}" python3 benchmarks/gpu_targets.py --config 1.3b --compile --json "$OUT/targets-1.3b.json" 2>&1 \
    | tee "$OUT/targets-1.3b.txt"
fi
