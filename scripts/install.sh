#!/usr/bin/env bash
# Install sdstudio into the current Python with the pinned torch, never a multi-GB CUDA build on a
# CPU machine. Usage: bash scripts/install.sh [extras], e.g. bash scripts/install.sh test
#
# torch first, by machine:
# - torch 2.13.0 already importable: kept.
# - an NVIDIA GPU (nvidia-smi works): torch==2.13.0 from PyPI (the CUDA build).
# - otherwise: torch==2.13.0 from PyTorch's CPU wheel index, with a short timeout. Where that index
#   cannot be reached (offline machines with a local wheel, as ours), pip takes the local/configured
#   copy; if none is found either, the script stops with a clear message instead of pulling CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=2.13.0
CPU_INDEX=${SDSTUDIO_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
extras=${1:-}

have_torch() { "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH' else 1)" 2>/dev/null; }

if have_torch; then
  echo "install: torch $TORCH already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install: NVIDIA GPU found; installing torch==$TORCH (CUDA build) from PyPI"
  "$PY" -m pip install -q "torch==$TORCH"
else
  echo "install: no GPU; installing the CPU build of torch==$TORCH (index $CPU_INDEX, 10 s timeout)"
  # --index-url replaces PyPI (no CUDA build can be chosen); pip's configured find-links and extra
  # indexes (local wheels) still apply, so an unreachable CPU index falls back to them.
  if ! "$PY" -m pip install -q --timeout 10 --retries 0 --index-url "$CPU_INDEX" "torch==$TORCH"; then
    echo "install: error: could not install the CPU build of torch==$TORCH: PyTorch's CPU index" >&2
    echo "  ($CPU_INDEX) is unreachable and no local wheel was found. Install it by hand, e.g." >&2
    echo "  pip install torch==$TORCH --index-url <a mirror of $CPU_INDEX>, then rerun this script." >&2
    exit 1
  fi
fi
# The package's own range (torch>=2.4) is met by the torch above, so pip installs no other build.
if [ -n "$extras" ]; then
  "$PY" -m pip install -q -e ".[$extras]"
else
  "$PY" -m pip install -q -e .
fi
# spandrel (model upscalers, MIT core) without its dependencies: its torchvision requirement would
# bring PyPI's CUDA build of torchvision and torch. sdstudio.upscale imports it without torchvision.
"$PY" -m pip install -q --no-deps "spandrel==0.4.2"
"$PY" -c "import torch; print('install: sdstudio ready with torch', torch.__version__, '(CUDA' if torch.cuda.is_available() else '(CPU', 'build)')"
