"""reward-winrate: the reward model judges the policy's answer against a reference model's answer.

The embedded default's headline metric: it needs no benchmark download and no API, only the
reward model and held-out prompts of the training mixture (``<mixture_dir>/val.parquet``, option
``mixture_dir``). For every prompt the reward model scores both *answers* (thoughts already
stripped by :func:`rlmt.thinking.extract` in each model's generations file — the two models may
use different thinking formats, so the scorer must not extract again: it is given the answers
and must be built with the non-thinking format). Win = policy reward > reference reward, tie 0.5.

``score`` context: ``reference_generations`` (id -> generations row of the reference model) and
``scorer`` (an :class:`rlmt.rewards.AnswerRewardScorer` with ``WARM_NOTHINK``).

Outcomes when an answer is missing: policy without an answer loses (failed, counted in
``n_failed``); reference without an answer while the policy answered is a policy win (counted in
``extra.n_reference_no_answer``).
"""

from __future__ import annotations

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


def compare_rewards(policy: float, reference: float) -> float:
    if policy > reference:
        return 1.0
    if policy < reference:
        return 0.0
    return 0.5


@register
class RewardWinRate(Benchmark):
    name: ClassVar[str] = "reward-winrate"
    metric_version: ClassVar[str] = "1"

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
        missing = [item.id for item in items if item.id not in reference_generations]
        if missing:
            raise BenchmarkError(f"reward-winrate: the reference generations lack {len(missing)} item(s), "
                                 f"e.g. {missing[:5]}")

        pairs: list[tuple[Item, str, str | None]] = []
        per_item: dict[str, ItemScore] = {}
        for item in items:
            row = generations.get(item.id)
            answer = answer_of(row)
            if answer is None:
                per_item[item.id] = failed_score(item.id, row)
                continue
            pairs.append((item, answer, answer_of(reference_generations[item.id])))

        prompts, outputs = [], []
        for item, answer, ref_answer in pairs:
            prompts.append(item.messages)
            outputs.append(answer)
            if ref_answer is not None:
                prompts.append(item.messages)
                outputs.append(ref_answer)
        rewards = iter(scorer.score(prompts, outputs).scores if outputs else [])
        n_reference_no_answer = 0
        for item, _answer, ref_answer in pairs:
            policy_reward = next(rewards)
            if ref_answer is None:
                n_reference_no_answer += 1
                per_item[item.id] = ItemScore(item.id, 1.0, {"policy_reward": policy_reward, "reference_reward": None})
                continue
            reference_reward = next(rewards)
            per_item[item.id] = ItemScore(item.id, compare_rewards(policy_reward, reference_reward),
                                          {"policy_reward": policy_reward, "reference_reward": reference_reward})

        ordered = [per_item[item.id] for item in items]
        values = [s.value if s.value is not None else 0.0 for s in ordered]
        metric = mean_metric(values, seed=int(ctx.get("seed", 0)))
        margins = [s.details["policy_reward"] - s.details["reference_reward"] for s in ordered
                   if s.value is not None and s.details.get("reference_reward") is not None]
        return BenchmarkResult(
            benchmark=self.name, metrics={"score": metric, "win_rate": metric}, n=len(items),
            n_failed=sum(1 for s in ordered if s.value is None), per_item=ordered, metric_version=self.metric_version,
            extra={"n_reference_no_answer": n_reference_no_answer,
                   "n_ties": sum(1 for s in ordered if s.value == 0.5),
                   "mean_reward_margin": sum(margins) / len(margins) if margins else None},
        )
