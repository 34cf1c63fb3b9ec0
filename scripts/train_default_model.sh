#!/usr/bin/env bash
# Train sdstudio's default model on the emoji set (VAE -> mini-CLIP -> LDM) and pack the result.
# Usage: scripts/train_default_model.sh DATA OUT [extra args for gpu_train_default.py, e.g. --total 500]
# Build DATA first with:  sdstudio data emoji data/emoji
# On the device machine diffusers travels as a wheel in .whl/ (see /work/.library/device/README.md).
set -euo pipefail
DATA=${1:?data folder}; OUT=${2:?output folder}; shift 2
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
python3 scripts/gpu_train_default.py "$DATA" "$OUT" "$@" 2>&1 | tee "$OUT/train.log"
