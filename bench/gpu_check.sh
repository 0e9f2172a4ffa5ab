#!/usr/bin/env bash
# GPU acceptance check of the real trainers (issue 28): GRPO (vLLM colocated, sleep mode), PPO (vLLM rollouts) and
# DPO steps at the paper's sequence lengths on a Qwen2.5-0.5B-body random model, within 10 minutes on one GPU.
# Prints per part rollout tokens/s, update tokens/s and MFU, and per phase the peak torch.cuda.max_memory_allocated
# next to the preflight's estimate; writes the same as JSON (--out, else $OUT/gpu_check.json). Runs what it can
# where TRL or vLLM are missing and says what it skipped; without a GPU it runs the tiny zoo shape on the CPU.
# See bench/gpu_check.py; the wheels it needs beyond a CUDA PyTorch image: bench/gpu_check_wheels.txt.
#
#   bash bench/gpu_check.sh [--tiny] [--steps N] [--budget-s S] [--parts grpo,ppo,dpo] [--out FILE] [--workdir DIR]
#   bash bench/gpu_check.sh --wheels DIR ...   # first install the carried wheels in DIR (no network) into a
#                                              # temporary target dir on PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
PY=$(command -v python || command -v python3)
if [ "${1:-}" = "--wheels" ]; then
  site=$(mktemp -d -t gpu_check_site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$2"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  shift 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: tiny CPU run"
exec "$PY" bench/gpu_check.py "$@"
