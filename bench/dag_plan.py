"""How fast Snakemake plans the paper's grid: `snakemake -n --configfile config/paper.yaml all`.

Prints the wall time, the number of planned training cells and jobs, and the ratio to the
issue's 10-second budget (below 1.0 is within budget).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 10.0


def main() -> int:
    t0 = time.perf_counter()
    # The grid's judges and teachers declare their API keys as envvars; a dry run needs them set, not real.
    env = {"OPENAI_API_KEY": "dry-run", "GEMINI_API_KEY": "dry-run", **os.environ}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile=config/paper.yaml", "all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return proc.returncode
    counts = {m.group(1): int(m.group(2))
              for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:")[1], re.M)}
    print(f"planned {counts.get('train', 0)} training cells, {counts.get('total', 0)} jobs in {wall:.2f} s; "
          f"ratio to the {BUDGET_S:.0f} s budget: {wall / BUDGET_S:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
