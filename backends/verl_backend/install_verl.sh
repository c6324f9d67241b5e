#!/usr/bin/env bash
# Install veRL 0.9.1 beside occctl in the active venv (run after `pip install -e .`).
# veRL 0.9.1 pins transformers<5.11 while occctl's TRL path pins transformers 5.23.0, so pip cannot resolve
# them together: veRL goes in with --no-deps and its other requirements are installed explicitly. Its Hydra
# dependency downgrades antlr4 (4.13 -> 4.9), which changes how math-verify parses some answers, so use a
# separate venv for veRL (as .ci/run does), not the one you evaluate with.
# megatron-core 0.16.1 (CPU import, no Transformer Engine / Apex; --no-deps: its requirements are torch, numpy,
# packaging, already here) is what the tiny-Megatron tests of the plugin run on; a GPU run needs the Megatron-LM
# commit of backends/verl_backend/README.md instead.
set -euo pipefail
pip install -q --no-deps verl==0.9.1 megatron-core==0.16.1
pip install -q accelerate codetiming datasets dill hydra-core 'numpy>=2.0.0' pandas peft 'pyarrow>=19.0.0' \
  pybind11 pylatexenc 'ray[default]>=2.41.0' torchdata 'tensordict!=0.9.0,<=0.10.0,>=0.8.0' wandb \
  'packaging>=20.0' tensorboard
