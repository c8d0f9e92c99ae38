#!/usr/bin/env bash
# Prepare, on this machine (which reaches a package index), what `make gpu-check` needs on a lent GPU machine that
# reaches none (docs/distributed.md, "The GPU check on a lent machine"): the wheels its image lacks and the embedded
# model's GGUF, in the ignored folder .gpu/, cut into three parts so that each `run` call carries under 64 MiB
# with the tree. The GPU image already has CUDA torch, transformers, peft, accelerate (never carry the CPU torch).
#   scripts/gpu_wheelhouse.sh            # -> .gpu/1 (wheels), .gpu/2 and .gpu/3 (the GGUF's halves)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/1/whl .gpu/2 .gpu/3
# The image's python3 is 3.12 (KINDS.md); versions: the ones this venv runs the tests with.
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheels=()
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions gguf platformdirs bitsandbytes; do
  wheels+=("$name==$(ver "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .gpu/1/whl "${wheels[@]}"
gguf_file=$("$PY" - <<'PY'
import importlib.util, pathlib
from tuneforge.models.hub import ALIASES
alias = ALIASES["smollm2-135m-instruct"]
spec = importlib.util.find_spec(alias.package)
print(pathlib.Path(next(iter(spec.submodule_search_locations))) / alias.filename)
PY
)
half=$(( ($(stat -c %s "$gguf_file") + 1) / 2 ))
split -b "$half" -d -a 1 "$gguf_file" .gpu/part-
mv .gpu/part-0 .gpu/2/model.part-0 && mv .gpu/part-1 .gpu/3/model.part-1
basename "$gguf_file" > .gpu/1/model.name
sha256sum "$gguf_file" | cut -d' ' -f1 > .gpu/1/model.sha256
du -sh .gpu/1 .gpu/2 .gpu/3
echo "now the three run calls of docs/distributed.md (carry .gpu/1, then .gpu/2, then .gpu/3 + scripts/gpu_check_there.sh)"
