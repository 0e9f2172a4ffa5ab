"""Training diagnostics with one vocabulary for every trainer, and the run's length-hacking verdict.

GRPO, PPO and DPO all describe their rollouts the same way: :func:`step_diagnostics` turns one
step's rollouts (reward, answer and thought lengths in policy tokens, clipped at the length limit or
not, malformed or not) into the ``diag/*`` metrics (:data:`METRICS` names and explains them);
:class:`RolloutLog` keeps every step's rollouts in ``<run dir>/diagnostics/rollouts.jsonl``
(appended, a resumed run's rewrite of a step wins); :func:`run_verdict` reads them all at the end
and says whether the reward's rise is length (:data:`RL_RULE`); DPO, which has pairs rather than
steps, gets :func:`pair_verdict` (:data:`DPO_RULE`). The verdict is saved beside the rollouts and
set as the run's MLflow tag ``rlmt.length_verdict`` (:func:`record_verdict`); the report reads both.

Below the trainers and the report: imports numpy and :mod:`rlmt.stats`, never a trainer, the report
or torch (MLflow only inside :func:`record_verdict`).
"""

from rlmt.diagnostics.pairs import record_dpo_pairs
from rlmt.diagnostics.records import DIAG_DIR, ROLLOUTS_FILE, RolloutLog, StepRollouts, read_rollouts
from rlmt.diagnostics.step import METRICS, PREFIX, pair_diagnostics, step_diagnostics
from rlmt.diagnostics.verdict import (
    DPO_RULE,
    MIN_PAIRS,
    MIN_STEPS,
    RL_RULE,
    TAG_VERDICT,
    TAG_VERDICT_DETAIL,
    TAG_VERDICT_RULE,
    VERDICT_FILE,
    Verdict,
    conclude_run,
    load_verdict,
    log_verdict,
    pair_verdict,
    record_verdict,
    run_verdict,
    verdict_since,
)

__all__ = ["DIAG_DIR", "DPO_RULE", "METRICS", "MIN_PAIRS", "MIN_STEPS", "PREFIX", "RL_RULE", "ROLLOUTS_FILE",
           "RolloutLog", "StepRollouts", "TAG_VERDICT", "TAG_VERDICT_DETAIL", "TAG_VERDICT_RULE", "VERDICT_FILE",
           "Verdict", "conclude_run", "load_verdict", "log_verdict", "pair_diagnostics", "pair_verdict",
           "read_rollouts", "record_dpo_pairs", "record_verdict", "run_verdict", "step_diagnostics", "verdict_since"]
