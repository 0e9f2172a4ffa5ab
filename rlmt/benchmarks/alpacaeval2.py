"""AlpacaEval 2: pairwise judging against the GPT-4-1106-preview baseline outputs (805 instructions).

Protocols
---------
* ``paper`` (the reference code): a JSON "which response is better" prompt, one random A/B
  order per item, judged inputs cut at 2,000 words, a 128-token judge reply. Win rate = share of
  wins; its "LC" is a logistic regression on the word-length difference read off at 0
  (:func:`rlmt.benchmarks.length_control.paper_lc_win_rate`).
* ``official``: an AlpacaEval-style preference prompt answered with one identifier ('m'/'M'),
  a random order per item (``both_orders: true`` judges both orders and averages), ties
  impossible; the LC win rate is the official GLM
  (:func:`rlmt.benchmarks.length_control.official_lc_win_rate`), which needs ``df_gamed.csv``
  (option ``df_gamed``, default ``<data_dir>/benchmarks/alpacaeval2/df_gamed.csv``).

Options: ``path`` (baseline JSON), ``df_gamed``, ``both_orders`` (false), ``max_words`` (2000),
``seed`` (0, the order draw).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from rlmt.benchmarks.base import (BenchmarkError, BenchmarkResult, Item, ItemScore, Metric, answer_of,
                                  limit_items, mean_metric, register)
from rlmt.benchmarks.length_control import official_lc_win_rate, paper_lc_win_rate, read_gamed_table
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges.parsing import parse_better, parse_preference_letter

BASELINE_FILE = "benchmarks/alpacaeval2/alpaca_eval_gpt4_baseline.json"
GAMED_FILE = "benchmarks/alpacaeval2/df_gamed.csv"


@register
class AlpacaEval2(JudgedBenchmark):
    name: ClassVar[str] = "alpacaeval2"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = resolve_data_file(self.options, data_dir, "path", BASELINE_FILE, "alpacaeval2")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}: not valid JSON ({err})") from None
        items = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not row.get("instruction") or "output" not in row:
                raise BenchmarkError(f"{path}: row {i} lacks 'instruction'/'output'")
            items.append(Item(id=str(i), messages=[{"role": "user", "content": row["instruction"]}],
                              reference={"index": i, "instruction": row["instruction"],
                                         "baseline_output": row["output"] or "",
                                         "baseline_generator": row.get("generator", "gpt4_1106_preview"),
                                         "dataset": row.get("dataset")}))
        return limit_items(items, limit, seed)

    # -------------------------------------------------------------- judging

    def tasks(self, items: list[Item], generations: dict[str, dict], protocol: str) -> list[JudgeTask]:
        if protocol == "official":  # fail before paying for judgments that cannot be aggregated
            known = read_gamed_table(self._gamed_path()).difficulty_by_index
            unknown = [it.id for it in items if int(it.reference["index"]) not in known]
            if unknown:
                raise BenchmarkError(f"alpacaeval2: df_gamed.csv has no instruction difficulty for items "
                                     f"{unknown[:5]} ({len(unknown)} in all)")
        max_words = self.options.get("max_words", 2000) if protocol == "paper" else None
        out = []
        for item, answer in answered(items, generations):
            model = prompts.truncate_words(answer, max_words)
            base = prompts.truncate_words(item.reference["baseline_output"], max_words)
            first = self.order_rng(item.id, protocol).choice("AB")
            orders = [first, "B" if first == "A" else "A"] if self.options.get("both_orders") else [first]
            for candidate in orders:
                a, b = (model, base) if candidate == "A" else (base, model)
                if protocol == "paper":
                    text = prompts.PAIRWISE_RANK_USER.format(instruction=item.reference["instruction"],
                                                             response_a=a, response_b=b)
                    prompt = JudgePrompt(prompts.user(text, prompts.PAIRWISE_RANK_SYSTEM), max_tokens=128)
                    parser = parse_better
                else:
                    text = prompts.PREFERENCE_USER.format(instruction=item.reference["instruction"],
                                                          response_a=a, response_b=b)
                    prompt = JudgePrompt(prompts.user(text, prompts.PREFERENCE_SYSTEM), max_tokens=8)
                    parser = _letter_to_position
                out.append(JudgeTask(item.id, f"candidate-{candidate}", prompt, parser, {"candidate": candidate}))
        return out

    def _gamed_path(self) -> Path:
        data_dir = self.options.get("data_dir")
        return resolve_data_file(self.options, Path(data_dir) if data_dir else None, "df_gamed", GAMED_FILE,
                                 "alpacaeval2 official LC GLM (df_gamed.csv)")

    # -------------------------------------------------------------- aggregation

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        per_item, prefs, headline = [], [], []
        len_model, len_base, d_words, index = [], [], [], []
        for item in items:
            answer = answer_of(generations.get(item.id))
            base = item.reference["baseline_output"]
            ok = [r for r in judgments.get(item.id, []) if r["ok"]]
            if answer is None:
                pref, details = 0.0, {"failure": "generation"}
                per_item.append(ItemScore(item.id, None, details))
            elif not ok:
                pref, details = math.nan, {"failure": "judge"}
                per_item.append(ItemScore(item.id, None, details))
            else:
                pref = float(np.mean([1.0 if r["parsed"] == r["candidate"] else 0.0 for r in ok]))
                per_item.append(ItemScore(item.id, pref, {"games": len(ok)}))
            if not math.isnan(pref):
                headline.append(pref)
            prefs.append(pref)
            text = answer or ""
            len_model.append(len(text))
            len_base.append(len(base))
            d_words.append(len(text.split()) - len(base.split()))
            index.append(int(item.reference["index"]))
        counts = count_failures(items, generations, judgments)
        metrics = {"win_rate": mean_metric(headline)}
        extra: dict = {**counts, "avg_length_chars": float(np.mean(len_model)) if len_model else None,
                       "both_orders": bool(self.options.get("both_orders"))}
        if headline:
            if protocol == "paper":
                lc = paper_lc_win_rate(prefs, d_words)
                lo, hi = _bootstrap_lc(prefs, d_words)
                metrics["lc_win_rate"] = Metric(lc["lc_win_rate"], lo, hi, len(headline))
                extra["lc"] = {"estimator": "paper: logistic(win ~ 1 + delta_words) at delta 0",
                               "intercept": lc["intercept"], "slope": lc["slope"]}
            else:
                lc = official_lc_win_rate(prefs, len_model, len_base, index, read_gamed_table(self._gamed_path()))
                half = 1.96 * lc["lc_standard_error"]
                metrics["lc_win_rate"] = Metric(lc["lc_win_rate"], lc["lc_win_rate"] - half,
                                                lc["lc_win_rate"] + half, len(prefs))
                extra["lc"] = {"estimator": "official AlpacaEval 2 length-controlled GLM (length_controlled_v1)",
                               "weights": lc["weights"], "C": lc["C"], "lc_standard_error": lc["lc_standard_error"],
                               "ci": "normal approximation, 1.96 x standard error of the predicted preferences"}
        metrics = {"score": metrics.get("lc_win_rate", metrics["win_rate"]), **metrics}  # headline: LC win rate
        return BenchmarkResult(self.name, metrics, n=len(items), n_failed=sum(1 for s in per_item if s.value is None),
                               per_item=per_item, protocol=protocol, metric_version=self.metric_version, extra=extra)


def _letter_to_position(text: str | None) -> str | None:
    letter = parse_preference_letter(text)
    return {"m": "A", "M": "B"}.get(letter) if letter else None


def _bootstrap_lc(prefs: list[float], d_words: list[float], n_resamples: int = 200, seed: int = 0):
    """Percentile CI of the paper's LC estimate by refitting on resampled items (cheap: 2 parameters)."""
    prefs_a, d_a = np.asarray(prefs, dtype=float), np.asarray(d_words, dtype=float)
    keep = ~np.isnan(prefs_a)
    prefs_a, d_a = prefs_a[keep], d_a[keep]
    if prefs_a.size < 2 or prefs_a.min() == prefs_a.max():
        v = paper_lc_win_rate(prefs_a, d_a)["lc_win_rate"]
        return v, v
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        idx = rng.integers(0, prefs_a.size, prefs_a.size)
        stats.append(paper_lc_win_rate(prefs_a[idx], d_a[idx])["lc_win_rate"])
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


