#!/usr/bin/env bash
# GPU check of the real trainers: 3 steps of train_grpo (TRL's GRPOTrainer) and of train_ppo on a
# Qwen2.5-0.5B-body random model in bf16; prints rollout tokens/s, update tokens/s and MFU against
# the card's measured bf16 matmul rate (see bench/gpu_check.py).
# On a machine without a GPU it runs the tiny zoo shape. Extra arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: tiny CPU run"
exec python bench/gpu_check.py "$@"
