#!/usr/bin/env bash
# GPU check: 3 GRPO + 3 PPO steps of a Qwen2.5-0.5B-shaped random model in bf16; prints rollout
# tokens/s, update tokens/s and MFU against the card's measured bf16 matmul rate.
# On a machine without a GPU it runs the tiny CPU shape. Extra arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: tiny CPU run"
exec python bench/gpu_check.py "$@"
