#!/usr/bin/env bash
# The GPU checks of the speed work in one command, sized for a short GPU loan (DEADLINE_S, default
# 540 s, shared by the parts in this order; each part gets what is left, up to its own cap):
#   1. the CUDA paths' tests (fp8 matmuls, attention backends, block-sparse attention by gather and flex);
#   2. the 14B targets (benchmarks/gpu_targets.py: diffusers, every attention backend, batched
#      guidance, compiled blocks, fp8 matmuls);
#   3. the real pipeline on CUDA (benchmarks/gpu_smoke.sh: the quickstart under each memory policy,
#      a LoRA training run);
#   4. the profile of one 14B forward (PROFILE=0 leaves it out);
#   5. the 1.3B targets (SMALL=0 leaves them out);
#   6. LongCat's block-sparse attention against dense over one 720p refinement layer (BSA=0 leaves it out).
# Figures go to $OUT (default /tmp/gpu-out), at most 8 files. Packages the machine lacks travel as
# wheels in .whl/, FlashAttention 4 in two calls (benchmarks/gpu_wheels.sh; docs/speed.md, "Measuring
# on a GPU").
set -u
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=${DEADLINE_S:-540}
mkdir -p "$OUT"
cap() {  # seconds for the next part: its own cap, or what is left before the deadline
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
if [ -f /tmp/site/.staged ]; then  # benchmarks/gpu_stage.sh installed the wheels and FlashAttention 4's libraries
  export PYTHONPATH=/tmp/site
elif compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
# the `wanflow` command and the gif saver's entry point, for the pipeline part
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . -e plugins/wanflow-gif > "/tmp/install.log" 2>&1 \
  || tail -3 /tmp/install.log
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  timeout "$(cap "${TESTS_S:-120}")" python3 -m pytest -q -p no:cacheprovider tests/models/test_fp8_matmul.py \
    tests/models/test_attention_backends.py tests/models/test_longcat_bsa.py tests/models/test_longcat_bsa_flex.py 2>&1 | tail -25
} 2>&1 | tee "$OUT/tests.txt"
timeout "$(cap "${BIG_S:-330}")" python3 benchmarks/gpu_targets.py --config 14b --compile --json "$OUT/targets-14b.json" 2>&1 \
  | tee "$OUT/targets-14b.txt"
if [ "$(cap 30)" -ge 30 ]; then
  timeout "$(cap "${SMOKE_S:-70}")" bash benchmarks/gpu_smoke.sh 2>&1 | tee "$OUT/smoke.txt"
fi
if [ "${PROFILE:-1}" = 1 ] && [ "$(cap 40)" -ge 40 ]; then
  timeout "$(cap "${PROFILE_S:-75}")" python3 -m benchmarks.dit_profile --config 14b --size 480x832x81 --device cuda \
    --dtype bf16 --attention cudnn 2>&1 | tee "$OUT/profile-14b.txt"
fi
if [ "${SMALL:-1}" = 1 ] && [ "$(cap 60)" -ge 60 ]; then
  timeout "$(cap "${SMALL_S:-120}")" python3 benchmarks/gpu_targets.py --config 1.3b --compile \
    --json "$OUT/targets-1.3b.json" 2>&1 | tee "$OUT/targets-1.3b.txt"
fi
if [ "${BSA:-1}" = 1 ] && [ "$(cap 30)" -ge 30 ]; then
  timeout "$(cap "${BSA_S:-60}")" python3 benchmarks/longcat_bsa.py --device cuda --grid 48x44x80 2>&1 \
    | tee "$OUT/bsa.txt"
fi
echo "done in ${SECONDS} s"
