#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch) and register the embedded sample pair: `bash scripts/demo.sh`.
# Results (transform .h5, warped image, displacement, weight map, QC picture, report) go to rlreg_demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
rlreg demo --out-dir rlreg_demo_output --overwrite "$@"
