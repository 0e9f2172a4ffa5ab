"""reward-winrate: the reward model judges the policy's answer against a reference model's answer.

The embedded default's headline metric: it needs no benchmark download and no API, only the
reward model and held-out prompts of the training mixture (``<mixture_dir>/val.parquet``, option
``mixture_dir``). For every prompt the reward model scores both *answers* (thoughts already
stripped by :func:`rlmt.thinking.extract` in each model's generations file — the two models may
use different thinking formats, so the scorer must not extract again: it is given the answers
and must be built with the non-thinking format).

The tie rule (since metric version 2) — a win rate must not depend on how answers were batched:

* every distinct reward-model input (prompt turns + answer) is scored **once**, and a policy
  answer whose reward-model input is the same text as the reference's gets the same float: the
  pair is a tie by construction, whatever the batch shapes, thread count or CPU (the same row
  scored at two positions of one padded batch can differ in its last bits);
* otherwise, with ``d = policy reward - reference reward``: win (1) if ``d > tie_tolerance``,
  loss (0) if ``d < -tie_tolerance``, tie (0.5) in between. ``tie_tolerance`` (option, reward
  units, default :data:`DEFAULT_TIE_TOLERANCE`) absorbs fp32 batching round-off, which stays below
  1e-5 for the reward models here; a reward model scored in bf16 needs a larger one (e.g. 0.05).

``scores.json`` states the rule and the tolerance in ``extra.tie_rule`` / ``extra.tie_tolerance``.

``score`` context: ``reference_generations`` (id -> generations row of the reference model) and
``scorer`` (an :class:`rlmt.rewards.AnswerRewardScorer` with ``WARM_NOTHINK``).

Outcomes when an answer is missing: policy without an answer loses (failed, counted in
``n_failed``) when the reference answered; neither answered is a tie (0.5, counted in
``extra.n_neither_answered``: a policy that fails exactly as its reference does has not lost to
it); reference without an answer while the policy answered is a policy win (counted in
``extra.n_reference_no_answer``).

Metrics: ``win_rate`` (alias ``score``) over every item, by the outcomes above; and
``win_rate_both_answered`` (since metric version 4), the same over only the items where both models
answered, with its own CI and ``n``. The two differ when one model fails the format more often than
the other: ``win_rate`` counts an unanswered reference as a win, so a policy that merely closes its
thought more often than its start can win on format alone; ``win_rate_both_answered`` compares answers
with answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

from rlmt.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    BenchmarkResult,
    Item,
    ItemScore,
    answer_of,
    failed_score,
    limit_items,
    mean_metric,
    register,
)

DEFAULT_TIE_TOLERANCE = 1e-4
TIE_RULE = ("identical reward-model inputs tie (scored once); otherwise win if policy - reference reward "
            "> tie_tolerance, loss if < -tie_tolerance, else tie (0.5)")


def compare_rewards(policy: float, reference: float, tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> float:
    """1 (win), 0 (loss) or 0.5 (tie: the rewards are within ``tie_tolerance`` of each other)."""
    margin = policy - reference
    if margin > tie_tolerance:
        return 1.0
    if margin < -tie_tolerance:
        return 0.0
    return 0.5


def _tie_tolerance(options: dict) -> float:
    raw = options.get("tie_tolerance", DEFAULT_TIE_TOLERANCE)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BenchmarkError(f"reward-winrate: option 'tie_tolerance' must be a number >= 0, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BenchmarkError(f"reward-winrate: option 'tie_tolerance' must be a number >= 0, got {raw!r}")
    return value


@register
class RewardWinRate(Benchmark):
    name: ClassVar[str] = "reward-winrate"
    # 3: neither answered ties (was a loss); 4: adds win_rate_both_answered (win_rate unchanged)
    metric_version: ClassVar[str] = "4"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        mixture_dir = self.options.get("mixture_dir")
        if not mixture_dir:
            raise BenchmarkError("reward-winrate: option 'mixture_dir' (a mixture directory with val.parquet) is required")
        path = Path(mixture_dir) / "val.parquet"
        if not path.exists():
            raise BenchmarkError(f"reward-winrate: {path} not found")
        import polars as pl

        frame = pl.read_parquet(path)
        missing = {"id", "messages"} - set(frame.columns)
        if missing:
            raise BenchmarkError(f"{path}: lacks column(s) {sorted(missing)}")
        items = []
        for row in frame.iter_rows(named=True):
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            if not messages or messages[-1]["role"] != "user":
                raise BenchmarkError(f"{path}: row {row['id']!r}: messages must end with a user turn")
            items.append(Item(id=str(row["id"]), messages=messages, reference={"source": row.get("source")}))
        return limit_items(items, limit, seed)

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        reference_generations: dict[str, dict] | None = ctx.get("reference_generations")
        scorer = ctx.get("scorer")
        if reference_generations is None or scorer is None:
            raise BenchmarkError("reward-winrate: score() needs reference_generations=... and scorer=...")
        fmt = getattr(scorer, "fmt", None)
        if fmt is not None and fmt.longcot:
            raise BenchmarkError("reward-winrate: the scorer must use the non-thinking format (WARM_NOTHINK): "
                                 "it is given already-extracted answers")
        tie_tolerance = _tie_tolerance(self.options)
        missing = [item.id for item in items if item.id not in reference_generations]
        if missing:
            raise BenchmarkError(f"reward-winrate: the reference generations lack {len(missing)} item(s), "
                                 f"e.g. {missing[:5]}")

        pairs: list[tuple[Item, str, str | None]] = []
        per_item: dict[str, ItemScore] = {}
        n_neither = 0
        for item in items:
            row = generations.get(item.id)
            answer = answer_of(row)
            ref_answer = answer_of(reference_generations[item.id])
            if answer is None and ref_answer is None:
                n_neither += 1
                per_item[item.id] = ItemScore(item.id, 0.5, {"policy_reward": None, "reference_reward": None,
                                                             "neither_answered": True})
                continue
            if answer is None:
                per_item[item.id] = failed_score(item.id, row)
                continue
            pairs.append((item, answer, ref_answer))

        # Every distinct (prompt, answer) is scored once: an answer both models gave gets one float.
        slot: dict[tuple[str, str], int] = {}
        prompts, outputs = [], []

        def slot_of(item: Item, answer: str) -> int:
            key = (json.dumps(item.messages, sort_keys=True), answer)
            if key not in slot:
                slot[key] = len(outputs)
                prompts.append(item.messages)
                outputs.append(answer)
            return slot[key]

        slots = [(slot_of(item, answer), None if ref is None else slot_of(item, ref)) for item, answer, ref in pairs]
        batch = scorer.score(prompts, outputs) if outputs else None
        rewards = batch.scores if batch is not None else []
        inputs = batch.reward_inputs if batch is not None else []
        n_reference_no_answer = n_identical = 0
        for (item, _answer, _ref), (p, r) in zip(pairs, slots):
            policy_reward = rewards[p]
            if r is None:
                n_reference_no_answer += 1
                per_item[item.id] = ItemScore(item.id, 1.0, {"policy_reward": policy_reward, "reference_reward": None})
                continue
            same_input = p == r or (bool(inputs) and inputs[p] == inputs[r])
            n_identical += same_input
            reference_reward = policy_reward if same_input else rewards[r]
            value = 0.5 if same_input else compare_rewards(policy_reward, reference_reward, tie_tolerance)
            per_item[item.id] = ItemScore(item.id, value, {"policy_reward": policy_reward,
                                                           "reference_reward": reference_reward,
                                                           "identical_input": same_input})

        ordered = [per_item[item.id] for item in items]
        values = [s.value if s.value is not None else 0.0 for s in ordered]
        seed = int(ctx.get("seed", 0))
        metric = mean_metric(values, seed=seed)
        both_answered = [s for s in ordered if s.value is not None and s.details.get("reference_reward") is not None]
        both = [s.value for s in both_answered]
        margins = [s.details["policy_reward"] - s.details["reference_reward"] for s in both_answered]
        return BenchmarkResult(
            benchmark=self.name, metrics={"score": metric, "win_rate": metric,
                                         "win_rate_both_answered": mean_metric(both, seed=seed)}, n=len(items),
            n_failed=sum(1 for s in ordered if s.value is None), per_item=ordered, metric_version=self.metric_version,
            extra={"n_reference_no_answer": n_reference_no_answer, "n_neither_answered": n_neither,
                   "n_ties": sum(1 for s in ordered if s.value == 0.5),
                   "n_identical_answers": n_identical,
                   "tie_rule": TIE_RULE, "tie_tolerance": tie_tolerance,
                   "mean_reward_margin": sum(margins) / len(margins) if margins else None},
        )
