#!/usr/bin/env bash
# The README's main job on a fresh clone: wall time and peak memory of the pipeline run.
#   bash bench/e2e.sh
# Target (issue 7): at most 15 minutes on 2 cores, peak RSS at most 6 GB.
# Set-up (`make venv`: a new .venv and `pip install -e .`) runs first and is not timed.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
git clone --quiet "$src" "$work/rlmt"
cd "$work/rlmt"
make --quiet venv
export PATH="$PWD/.venv/bin:$PATH"   # the rules run `rlmt ...`
.venv/bin/python - <<'PY'
import resource, subprocess, sys, time
t0 = time.time()
rc = subprocess.call([".venv/bin/snakemake", "all"])
wall = time.time() - t0
peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024
print(f"e2e: exit {rc}; wall {wall / 60:.1f} min (target <= 15); "
      f"peak RSS of the largest process {peak_gb:.2f} GB (target <= 6)")
sys.exit(rc)
PY
echo "report: $work/rlmt/results/report/report.md"
