"""reward-winrate: the reward model judges the policy's answer against a reference model's answer.

The embedded default's headline metric: it needs no benchmark download and no API, only the
reward model and held-out prompts of the training mixture (``<mixture_dir>/val.parquet``, option
``mixture_dir``; option ``split: tune`` reads the mixture's tuning split instead, for choosing
hyperparameters without touching the evaluation prompts). For every prompt the reward model scores both *answers* (thoughts already
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
``scorer``: any :class:`rlmt.rewards.AnswerReward` (the configured ``reward_models`` entry: a
classifier, a mix ...) built with ``WARM_NOTHINK``. Every policy and reference answer is scored in
**one** :meth:`~rlmt.rewards.AnswerReward.score` call, so a batch-relative reward (``mix``: each part
z-normalised over the batch) normalises both answers of a pair together, over the whole evaluation.

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

``lc_win_rate`` (since metric version 5), the length-controlled win rate: the win rate the policy would
have at equal answer length, by :func:`rlmt.stats.length_control.lc_win_rate` (the paper's LC: a
logistic fit of the outcome on AlpacaEval 2's normalised length difference ``tanh(d / sd(d))``, read
at ``d = 0``; a tie is half a win, as in the raw rate) over the items both models answered -- compare it
with ``win_rate_both_answered``, its raw counterpart on the same items (a missing answer has no length
to control for). ``d`` is the policy's minus the reference's answer length in whitespace-separated
words (:func:`answer_words`: one unit for any two models, whatever their tokenizers). Its CI is a
seeded percentile bootstrap over prompts that refits on every resample. ``extra.lc`` states the
estimator and holds the fit. Each per-item row keeps ``policy_reward``, ``policy_words``,
``reference_words`` and ``policy_answer_digest``, from which the report pairs a think cell with its
no-think twin (:mod:`rlmt.report.head_to_head`).
"""

from __future__ import annotations

import hashlib
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
    Metric,
    answer_of,
    failed_score,
    limit_items,
    mean_metric,
    register,
)
from rlmt.stats.length_control import DEFAULT_C, LC_ESTIMATOR, lc_bootstrap_ci, lc_win_rate
from rlmt.stats.paired_rewards import DEFAULT_TIE_TOLERANCE, compare_rewards  # noqa: F401  (re-exported)

TIE_RULE = ("identical reward-model inputs tie (scored once); otherwise win if policy - reference reward "
            "> tie_tolerance, loss if < -tie_tolerance, else tie (0.5)")
LENGTH_UNIT = "words: whitespace-separated tokens of the extracted answer (Python's str.split), any model's"


def answer_words(answer: str) -> int:
    """An answer's length for the length control: its whitespace-separated words.

    Words, not a tokenizer's tokens: the policy and its reference may be different model families,
    and a length difference must be in one unit for both (the paper's LC uses words too).
    """
    return len(answer.split())


def answer_digest(answer: str) -> str:
    """A short digest of the answer text: two cells' answers to the same prompt with equal digests are
    the same reward-model input, so the report's head-to-head ties them by construction."""
    return hashlib.sha256(answer.encode("utf-8")).hexdigest()[:16]


def _answer_facts(answer: str, reference: str | None) -> dict:
    """The per-item fields the length control and the report's head-to-head read."""
    return {"policy_words": answer_words(answer),
            "reference_words": None if reference is None else answer_words(reference),
            "policy_answer_digest": answer_digest(answer)}


def _length_controlled(both_answered: list[ItemScore], seed: int) -> tuple[Metric, dict]:
    """LC win rate over the items both models answered (``win_rate_both_answered``'s items), its CI, its fit."""
    outcomes = [s.value for s in both_answered]
    differences = [s.details["policy_words"] - s.details["reference_words"] for s in both_answered]
    fit = lc_win_rate(outcomes, differences)
    lo, hi = lc_bootstrap_ci(outcomes, differences, seed=seed) if outcomes else (None, None)
    about = {"estimator": LC_ESTIMATOR, "length_unit": LENGTH_UNIT, "items": "both answered", "C": DEFAULT_C,
             # an infinite intercept (every outcome a win or a loss) is written as null: scores.json stays strict JSON
             "intercept": fit.intercept if math.isfinite(fit.intercept) else None, "slope": fit.slope,
             "mean_word_difference": sum(differences) / len(differences) if differences else None}
    return Metric(fit.value, lo, hi, fit.n), about


WINRATE_SPLITS = ("val", "tune")  # the evaluation prompts; the tuning prompts (mixtures.<name>.n_tune)


def winrate_split(options: dict) -> str:
    """The mixture split the win rate's prompts come from (option ``split``, default ``val``)."""
    split = options.get("split", "val")
    if split not in WINRATE_SPLITS:
        raise BenchmarkError(f"reward-winrate: option 'split' must be one of {list(WINRATE_SPLITS)}, got {split!r} "
                             "(never the training prompts)")
    return split


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
    # 3: neither answered ties (was a loss); 4: adds win_rate_both_answered (win_rate unchanged);
    # 5: adds lc_win_rate, and answer lengths and digests per item (win_rate unchanged)
    metric_version: ClassVar[str] = "5"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        mixture_dir = self.options.get("mixture_dir")
        if not mixture_dir:
            raise BenchmarkError("reward-winrate: option 'mixture_dir' (a mixture directory with val.parquet) is required")
        path = Path(mixture_dir) / f"{winrate_split(self.options)}.parquet"
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
        from rlmt.rewards import AnswerReward

        if not isinstance(scorer, AnswerReward):
            raise BenchmarkError(f"reward-winrate: scorer must be an rlmt.rewards.AnswerReward, got {type(scorer).__name__}")
        if scorer.fmt.longcot:
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
        prompts, outputs, extras = [], [], []

        def slot_of(item: Item, answer: str) -> int:
            key = (json.dumps(item.messages, sort_keys=True), answer)
            if key not in slot:
                slot[key] = len(outputs)
                prompts.append(item.messages)
                outputs.append(answer)
                extras.append({"id": item.id})  # the reward's extras (a rubric finds the item's rubric by id)
            return slot[key]

        slots = [(slot_of(item, answer), None if ref is None else slot_of(item, ref)) for item, answer, ref in pairs]
        batch = scorer.score(prompts, outputs, extras) if outputs else None  # one call: one batch (see above)
        rewards = batch.scores if batch is not None else []
        inputs = batch.reward_inputs if batch is not None else []
        n_reference_no_answer = n_identical = 0
        for (item, answer, ref), (p, r) in zip(pairs, slots):
            policy_reward = rewards[p]
            if r is None:
                n_reference_no_answer += 1
                per_item[item.id] = ItemScore(item.id, 1.0, {"policy_reward": policy_reward, "reference_reward": None,
                                                             **_answer_facts(answer, None)})
                continue
            same_input = p == r or (bool(inputs) and inputs[p] == inputs[r])
            n_identical += same_input
            reference_reward = policy_reward if same_input else rewards[r]
            value = 0.5 if same_input else compare_rewards(policy_reward, reference_reward, tie_tolerance)
            per_item[item.id] = ItemScore(item.id, value, {"policy_reward": policy_reward,
                                                           "reference_reward": reference_reward,
                                                           "identical_input": same_input,
                                                           **_answer_facts(answer, ref)})

        ordered = [per_item[item.id] for item in items]
        values = [s.value if s.value is not None else 0.0 for s in ordered]
        seed = int(ctx.get("seed", 0))
        metric = mean_metric(values, seed=seed)
        both_answered = [s for s in ordered if s.value is not None and s.details.get("reference_reward") is not None]
        both = [s.value for s in both_answered]
        margins = [s.details["policy_reward"] - s.details["reference_reward"] for s in both_answered]
        lc, lc_about = _length_controlled(both_answered, seed)
        return BenchmarkResult(
            benchmark=self.name, metrics={"score": metric, "win_rate": metric,
                                         "win_rate_both_answered": mean_metric(both, seed=seed),
                                         "lc_win_rate": lc}, n=len(items),
            n_failed=sum(1 for s in ordered if s.value is None), per_item=ordered, metric_version=self.metric_version,
            extra={"n_reference_no_answer": n_reference_no_answer, "n_neither_answered": n_neither,
                   "n_ties": sum(1 for s in ordered if s.value == 0.5),
                   "n_identical_answers": n_identical,
                   "tie_rule": TIE_RULE, "tie_tolerance": tie_tolerance,
                   "mean_reward_margin": sum(margins) / len(margins) if margins else None,
                   "lc": lc_about},
        )
