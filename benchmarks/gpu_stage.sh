#!/usr/bin/env bash
# On the GPU machine (benchmarks/gpu_wheels.sh prepared the folders): keep FlashAttention 4's
# first library part in /tmp (call 1), or, with the second part, install the carried wheels and
# the libraries into /tmp/site, which gpu_targets.sh puts on PYTHONPATH (call 2).
set -u
mkdir -p /tmp/stage /tmp/site
[ -f .fa4a/part-aa ] && cp .fa4a/part-aa /tmp/stage/ && echo "staged $(du -h /tmp/stage/part-aa | cut -f1)"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
if [ -f .fa4b/part-ab ]; then
  if [ -f /tmp/stage/part-aa ]; then
    cat /tmp/stage/part-aa .fa4b/part-ab | xz -d | tar -C /tmp/site -xf - && echo "FlashAttention 4's libraries installed"
  else
    echo "the first part is not here (the machine was released between the calls): flash4 will not run"
  fi
fi
touch /tmp/site/.staged  # gpu_targets.sh installs nothing over it
exit 0
