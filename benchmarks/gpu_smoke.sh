#!/usr/bin/env bash
# The real pipeline on a CUDA device, in under a minute: the quickstart under each memory policy
# (each computed anew; the policies place weights differently and must give the same video bit for
# bit), its rerun (all cache hits), and a short LoRA training run of the shipped model on two
# images. Output is gif (a GPU machine may lack ffmpeg). Run from the repository root:
#   DEVICE=cuda bash benchmarks/gpu_smoke.sh        # DEVICE=cpu is a dry run
set -u
DEVICE=${DEVICE:-cuda}
ROOT=$PWD
WORK=$(mktemp -d)
export WANFLOW_CACHE="$WORK/cache" WANFLOW_RUNS="$WORK/runs"
cd "$WORK" || exit 1
for policy in none stream offload; do
  start=$SECONDS
  out=$(wanflow run "$ROOT/recipes/quickstart.toml" --quiet --no-cache --set output.format=gif \
        --set runtime.device="$DEVICE" --set memory.policy="$policy" 2>&1 | tail -1)
  echo "quickstart policy=$policy: $((SECONDS - start)) s, $(md5sum "$out" 2>/dev/null | cut -c1-12 || echo "failed: $out")"
done
start=$SECONDS
echo "quickstart rerun: $(wanflow run "$ROOT/recipes/quickstart.toml" --set output.format=gif \
      --set runtime.device="$DEVICE" 2>&1 | grep -E 'hit,' ) ($((SECONDS - start)) s)"
cp "$ROOT/recipes/assets/first_frame.png" "$ROOT/recipes/assets/last_frame.png" .
printf 'video,prompt\nfirst_frame.png,a photo of a scene\nlast_frame.png,the scene at the end\n' > metadata.csv
cat > train.toml <<'EOF'
schema = 1
name = "gpu-smoke-train"
model = "wanflow-tiny"

[train]
dataset = "metadata.csv"
width = 64
height = 64
frames = 1
method = "lora"
lora_rank = 4
steps = 20
learning_rate = 0.0001
batch_size = 2
EOF
start=$SECONDS
wanflow run train.toml --set runtime.device="$DEVICE" 2>&1 | grep -vE 'train\.step' | tail -4
echo "lora training: $((SECONDS - start)) s"
rm -rf "$WORK"
