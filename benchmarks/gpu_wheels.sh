#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, the packages a lent GPU machine lacks (it reaches no
# registry): run from the repository root. Writes folders git ignores (.git/info/exclude):
#   .whl/   wheels of the packages the benchmarks and tests import there (a few MB), SageAttention's
#           (Triton, pure Python) and FlashAttention 4's small wheels;
#   .fa4a/  .fa4b/  FlashAttention 4's CuTe DSL libraries (nvidia-cutlass-dsl-libs-cu13: 92 MB as a
#           wheel, 237 MB unpacked) as one xz tar in two parts. A call to the GPU machine carries at
#           most 64 MiB with the checkout, so they travel in two calls:
#             call 1, carry [".fa4a"]:          bash benchmarks/gpu_stage.sh
#             call 2, carry [".whl", ".fa4b"]:  bash benchmarks/gpu_stage.sh && OUT=$OUT bash benchmarks/gpu_targets.sh
#           The machine keeps /tmp between calls only while it is warm; call 2 without call 1's
#           part runs everything but `flash4`.
# CU=12 takes the CUDA 12 libraries (the default, 13, matches torch built for CUDA 13).
set -euo pipefail
PY=${PY_VERSION:-3.12}
CU=${CU:-13}
DSL=${DSL_VERSION:-4.8.1}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
fetch() {  # fetch DIR SPEC...: wheels for the GPU machine's Python, without their dependencies
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    "${platforms[@]}" -d "$dir" "$@"
}
for folder in /.whl/ /.fa4a/ /.fa4b/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
rm -rf .whl .fa4a .fa4b
fetch .whl structlog diskcache tomlkit platformdirs ftfy wcwidth diffusers importlib_metadata sageattention
fetch .whl --pre flash-attn-4  # beta releases only
fetch .whl "nvidia-cutlass-dsl==$DSL" "nvidia-cutlass-dsl-libs-base==$DSL" "nvidia-cutlass-dsl-libs-core==$DSL" \
  "apache-tvm-ffi<0.2" quack-kernels torch-c-dlpack-ext  # flash-attn-4's needs (unzip -p its wheel '*/METADATA')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch "$work" "nvidia-cutlass-dsl-libs-cu$CU==$DSL"
mkdir "$work/site"
python3 -m zipfile -e "$work"/nvidia_cutlass_dsl_libs_cu"$CU"-*.whl "$work/site"
mkdir .fa4a .fa4b
tar -C "$work/site" -cf - . | xz -9 -T0 | split -b 40m - "$work/part-"
mv "$work/part-aa" .fa4a/
cat "$work"/part-a[b-z] > .fa4b/part-ab
du -sh .whl .fa4a .fa4b
