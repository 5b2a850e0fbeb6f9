#!/usr/bin/env bash
# Train a policy on the GPUs of this machine and validate it, timed: the GPU recipe of issue 25.
#
#   bash scripts/train_gpu.sh spac         # configs/spac_gpu.json -> runs/gpu/spac-brain-synth
#   bash scripts/train_gpu.sh morphseek    # configs/morphseek_gpu.json
#
# Needs a CUDA build of PyTorch (README, "GPU") and ../shared/data (the SynthSeg label maps). Trains with
# torchrun on every visible GPU (DistributedDataParallel, nccl), writes the model to runs/gpu/<id>/ (card,
# weights, log: never into models/, where a model ships only after it meets models/README.md's bar), then
# validates it on the validation pairs beside tto with benchmarks/policies.py. Prints the wall time of each
# part. The GPU configs train with bfloat16 mixed precision (optim.precision "bf16": the forward passes
# under autocast, tested on CPU in Testing/test_training.py). Not run on a GPU by this project yet (none
# was at hand): the configs' sizes and the time are estimates.
set -euo pipefail
cd "$(dirname "$0")/.."
FAMILY="${1:-spac}"
CONFIG="configs/${FAMILY}_gpu.json"
[ -f "$CONFIG" ] || { echo "train_gpu.sh: no $CONFIG (spac or morphseek)" >&2; exit 2; }
python - <<'PY' || { echo "train_gpu.sh: no CUDA GPU visible to PyTorch" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY
GPUS="$(python -c 'import torch; print(torch.cuda.device_count())')"
ID="$(python -c "import json; print(json.load(open('$CONFIG'))['id'])")"
OUT="runs/gpu/$ID"
export PYTHONPATH="$PWD/RLRegistration${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
torchrun --standalone --nproc_per_node "$GPUS" -m RLRegistrationLib train --config "$CONFIG" --out "$OUT"
trained=$(date +%s)
python benchmarks/policies.py --model "$OUT" --out "$OUT/validation"
done_at=$(date +%s)
echo "train_gpu.sh: $ID on $GPUS GPU(s): training $((trained - start)) s, validation $((done_at - trained)) s"
