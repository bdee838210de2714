#!/usr/bin/env bash
# One node, N ranks (GPUs, or CPU ranks on a machine without them).
#   RANKS=8 bash launch/single_node.sh --config configs/codeparrot_zero2.json --ds_config ds_configs/zero2.json
# Ctrl-C or SIGTERM: every rank finishes its step, saves and exits 0 (twice: stop at once).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RANKS=${RANKS:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
exec "$PYTHON" -m launch.run --num_gpus "$RANKS" pretrain_gpt.py "$@"
