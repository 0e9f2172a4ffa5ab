"""WildBench v2: real user conversations (1,024 tasks, some multi-turn) judged with a per-task
checklist.

Data: the official Hugging Face rows (``allenai/WildBench``, config v2), one JSON object per line in
``<data_dir>/benchmarks/wildbench/wildbench_v2.jsonl`` (or a ``.json`` list / ``.parquet``):
``session_id``, ``conversation_input`` (turns with ``role``/``content``, ending with the user),
``checklist`` (list of strings), ``references`` ({"gpt-4": answer, ...}), ``primary_tag`` ...

Modes (option ``mode``):

* ``reward`` (WB-Reward, the paper's number): pairwise against ``references[reference_model]``
  (default ``gpt-4``) in one random order; the judge's choice ``A++/A+/A=B/B+/B++`` becomes
  +100/+50/0/-50/-100 from the model's side; the mean is reported in -100..100.
* ``score`` (WB-Score): the judge grades the answer alone 1-10; reported as
  ``mean((s - 5) * 2) * 10`` in -100..100.

Protocols: ``paper`` = the reference code (judged inputs cut at 2,000 words, no length penalty);
``official`` = the WildBench length penalty: a *slight* win (+-50) turns into a tie when the
winner's answer is more than ``K`` characters longer than the loser's (option ``length_penalty_k``,
500). Judge parse failures are counted and left out in both (the reference code scored them -100).

Judge replies (option ``reply_parsing``): ``official`` (default, allenai/WildBench's
``batch_results_format.py``) keeps only a reply that is bare JSON with a known choice / a
``score`` (any value, "0" included); ``lenient`` (ours) also reads JSON inside fences or prose and
a truncated object's field, scores 1-10 only. ``extra.lenient_rescued_replies`` counts the
replies the lenient reading parses and the official one drops.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from rlmt.benchmarks.base import (BenchmarkError, BenchmarkResult, Item, ItemScore, answer_of, limit_items,
                                  mean_metric, read_json_rows, register)
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges.parsing import (parse_wildbench_choice, parse_wildbench_choice_official, parse_wildbench_score,
                                 parse_wildbench_score_official)

DATA_FILE = "benchmarks/wildbench/wildbench_v2.jsonl"
REWARD = {"A++": 100, "A+": 50, "A=B": 0, "B+": -50, "B++": -100}
PARSERS = {"official": {"score": parse_wildbench_score_official, "reward": parse_wildbench_choice_official},
           "lenient": {"score": parse_wildbench_score, "reward": parse_wildbench_choice}}


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    return read_json_rows(path, lines=path.suffix != ".json")


def _history(messages: list[dict]) -> str:
    if len(messages) <= 1:
        return "(no earlier turns)"
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages[:-1])


@register
class WildBench(JudgedBenchmark):
    name: ClassVar[str] = "wildbench"
    metric_version: ClassVar[str] = "1"

    @property
    def mode(self) -> str:
        mode = self.options.get("mode", "reward")
        if mode not in ("reward", "score"):
            raise BenchmarkError(f"wildbench: unknown mode {mode!r}; allowed: reward, score")
        return mode

    @property
    def parsing(self) -> str:
        mode = self.options.get("reply_parsing", "official")
        if mode not in PARSERS:
            raise BenchmarkError(f"wildbench: unknown reply_parsing {mode!r}; allowed: {sorted(PARSERS)}")
        return mode

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = resolve_data_file(self.options, data_dir, "path", DATA_FILE, "wildbench")
        ref_model = self.options.get("reference_model", "gpt-4")
        items = []
        for i, row in enumerate(read_rows(path)):
            turns = row.get("conversation_input") or []
            sid = str(row.get("session_id") or row.get("id") or "")
            if not sid or not turns or turns[-1].get("role") != "user":
                raise BenchmarkError(f"{path}: row {i} needs a session_id and a conversation_input ending with the user")
            refs = row.get("references") or {}
            if self.mode == "reward" and ref_model not in refs:
                raise BenchmarkError(f"{path}: task {sid} has no reference answer {ref_model!r}; has {sorted(refs)}")
            messages = [{"role": t["role"], "content": t["content"]} for t in turns]
            items.append(Item(sid, messages, {"checklist": list(row.get("checklist") or []),
                                              "reference_answer": refs.get(ref_model, ""), "reference_model": ref_model,
                                              "primary_tag": row.get("primary_tag")}))
        return limit_items(items, limit, seed)

    def tasks(self, items, generations, protocol) -> list[JudgeTask]:
        max_words = self.options.get("max_words", 2000) if protocol == "paper" else None
        max_tokens = int(self.options.get("judge_max_tokens", 1024))
        out = []
        for item, answer in answered(items, generations):
            msgs = item.messages
            checklist = "\n".join(f"- {c}" for c in item.reference["checklist"]) or "(none)"
            common = {"history": prompts.truncate_words(_history(msgs), max_words),
                      "query": prompts.truncate_words(msgs[-1]["content"], max_words), "checklist": checklist}
            model = prompts.truncate_words(answer, max_words)
            if self.mode == "score":
                text = prompts.WILDBENCH_SCORE_USER.format(**common, response=model)
                out.append(JudgeTask(item.id, "score", JudgePrompt(prompts.user(text), max_tokens),
                                     PARSERS[self.parsing]["score"], {}))
                continue
            ref = prompts.truncate_words(item.reference["reference_answer"], max_words)
            candidate = self.order_rng(item.id, "order").choice("AB")
            a, b = (model, ref) if candidate == "A" else (ref, model)
            text = prompts.WILDBENCH_PAIR_USER.format(**common, response_a=a, response_b=b)
            out.append(JudgeTask(item.id, f"candidate-{candidate}", JudgePrompt(prompts.user(text), max_tokens),
                                 PARSERS[self.parsing]["reward"], {"candidate": candidate}))
        return out

    def item_reward(self, choice: str, candidate: str, len_model: int, len_ref: int, protocol: str) -> int:
        """The model's reward for one verdict, with the official length penalty when it applies."""
        reward = REWARD[choice] if candidate == "A" else -REWARD[choice]
        k = self.options.get("length_penalty_k", 500)
        if protocol == "official" and k is not None and abs(reward) == 50:
            winner_len, loser_len = (len_model, len_ref) if reward > 0 else (len_ref, len_model)
            if winner_len - loser_len > k:
                return 0
        return reward

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        per_item, values = [], []
        dist: dict[str, int] = {}
        for item in items:
            answer = answer_of(generations.get(item.id))
            if answer is None:
                per_item.append(ItemScore(item.id, None, {"failure": "generation"}))
                values.append(-100.0)
                continue
            ok = [r for r in judgments.get(item.id, []) if r["ok"]]
            if not ok:
                per_item.append(ItemScore(item.id, None, {"failure": "judge"}))
                continue
            r = ok[0]
            if self.mode == "score":
                value = (float(r["parsed"]) - 5.0) * 2.0 * 10.0
                details = {"raw_score": r["parsed"]}
            else:
                value = float(self.item_reward(r["parsed"], r["candidate"], len(answer),
                                               len(item.reference["reference_answer"]), protocol))
                details = {"choice": r["parsed"], "candidate": r["candidate"]}
                dist[str(int(value))] = dist.get(str(int(value)), 0) + 1
            per_item.append(ItemScore(item.id, value, details))
            values.append(value)
        metric = "score" if self.mode == "score" else "reward"
        official, lenient = PARSERS["official"][self.mode], PARSERS["lenient"][self.mode]
        rescued = sum(1 for rows in judgments.values() for r in rows
                      if r.get("raw") and official(r["raw"]) is None and lenient(r["raw"]) is not None)
        extra = {**count_failures(items, generations, judgments), "mode": self.mode,
                 "reply_parsing": self.parsing, "lenient_rescued_replies": rescued,
                 "reference_model": self.options.get("reference_model", "gpt-4"),
                 "length_penalty_k": self.options.get("length_penalty_k", 500) if protocol == "official" else None,
                 "reward_distribution": dist,
                 "avg_answer_chars": float(np.mean([len(answer_of(generations.get(i.id)) or "") for i in items]))
                 if items else None}
        headline = mean_metric(values, scale=1.0)
        return BenchmarkResult(self.name, {"score": headline, metric: headline}, n=len(items),
                               n_failed=sum(1 for s in per_item if s.value is None), per_item=per_item,
                               protocol=protocol, metric_version=self.metric_version, extra=extra)
