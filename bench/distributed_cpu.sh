#!/usr/bin/env bash
# 2-process CPU (gloo) DDP runs of SFT, GRPO and PPO on tiny models (see bench/distributed_cpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
exec python bench/distributed_cpu.py "${1:-$(mktemp -d)}" "${2:-sft,grpo,ppo}"
