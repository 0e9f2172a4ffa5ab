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
``official`` = allenai/WildBench ``d6b8dca`` (``src/eval.py`` + ``batch_results_format.py`` +
``leaderboard/data_dir/_create_tables.py``):

* judged inputs (history, query, both answers) are cut at 1,000 space-separated words with
  ``"... (truncated)"`` appended in reward mode (option ``official_max_words``; the official score
  mode cuts nothing, ``--max_words_to_eval -1``); an empty answer is shown as
  ``[This model response is empty.]``;
* reward: an item whose shown answer or reference was truncated or is empty keeps its place in
  the denominator with 0 (it is no win, tie or loss), and is left out of the task categories;
* the length penalty (option ``length_penalty_k``; default off, as the official ``K=-1`` and the
  WildBench paper's table): a *slight* win/loss turns into a tie when the winner's shown answer
  (stripped) is more than ``K`` characters longer than the loser's;
* score: the headline is ``(mean - 5) * 2 * 10`` over every parsed reply; the task categories
  leave out answers that are empty or end with ``"... (truncated)"``;
* ``task_macro_reward`` / ``task_macro_score``: the primary + secondary tags map to 5 task groups
  (each item counts once in each of its groups), each group's mean (score: rescaled), then the
  official weights (Creative 0.5, Planning & Reasoning 1.25, Math & Data 1, Info/Advice 0.75,
  Coding 1.25) summed over the groups present and divided by 4.75, the sum of all five.

Judge parse failures are counted and left out in both (as official, which drops them; the
reference code scored them -100).

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

from rlmt.benchmarks.base import (BenchmarkError, BenchmarkResult, Item, ItemScore, Metric, answer_of, limit_items,
                                  mean_metric, read_json_rows, register)
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges.parsing import (parse_wildbench_choice, parse_wildbench_choice_official, parse_wildbench_score,
                                 parse_wildbench_score_official)

DATA_FILE = "benchmarks/wildbench/wildbench_v2.jsonl"
TRUNCATED = "... (truncated)"
EMPTY = "[This model response is empty.]"
TASK_GROUP = {"Information seeking": "Information/Advice seeking", "Creative Writing": "Creative Tasks",
              "Coding & Debugging": "Coding & Debugging", "Reasoning": "Planning & Reasoning", "Editing": "Creative Tasks",
              "Math": "Math & Data Analysis", "Planning": "Planning & Reasoning", "Brainstorming": "Creative Tasks",
              "Role playing": "Creative Tasks", "Advice seeking": "Information/Advice seeking",
              "Data Analysis": "Math & Data Analysis", "Others": "Creative Tasks"}
TASK_WEIGHTS = {"Creative Tasks": 0.5, "Planning & Reasoning": 1.25, "Math & Data Analysis": 1.0,
                "Information/Advice seeking": 0.75, "Coding & Debugging": 1.25}
REWARD = {"A++": 100, "A+": 50, "A=B": 0, "B+": -50, "B++": -100}
PARSERS = {"official": {"score": parse_wildbench_score_official, "reward": parse_wildbench_choice_official},
           "lenient": {"score": parse_wildbench_score, "reward": parse_wildbench_choice}}


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    return read_json_rows(path, lines=path.suffix != ".json")


def shorten_official(text: str, max_words: int | None) -> str:
    """The official cut: more than ``max_words`` space-separated words -> the first ``max_words``
    joined by spaces, then ``"... (truncated)"`` (no space before it); off when ``max_words <= 0``."""
    if max_words and max_words > 0 and len(text.split(" ")) > max_words:
        return " ".join(text.split(" ")[:max_words]) + TRUNCATED
    return text


def shown_official(answer: str, max_words: int | None, empty_marker: bool = True) -> str:
    """An answer as the official judge prompt shows it (reward mode marks an empty one)."""
    text = shorten_official(answer, max_words)
    return EMPTY if empty_marker and not text.strip() else text


def task_groups(tags: list[str]) -> list[str]:
    """The official task groups of an item's tags (once each; unknown tags have none)."""
    return sorted({TASK_GROUP[t] for t in tags if t in TASK_GROUP})


def weighted_macro(by_group: dict[str, float]) -> float:
    """The official task-macro: the weighted sum over the groups present / the sum of all 5 weights."""
    return sum(v * TASK_WEIGHTS[g] for g, v in by_group.items()) / sum(TASK_WEIGHTS.values())


def _history(messages: list[dict]) -> str:
    if len(messages) <= 1:
        return "(no earlier turns)"
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages[:-1])


@register
class WildBench(JudgedBenchmark):
    name: ClassVar[str] = "wildbench"
    metric_version: ClassVar[str] = "2"

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
                                              "primary_tag": row.get("primary_tag"),
                                              "secondary_tags": list(row.get("secondary_tags") or [])}))
        return limit_items(items, limit, seed)

    @property
    def official_max_words(self) -> int | None:
        """The official cut of judged inputs: 1,000 words in reward mode, none in score mode."""
        default = 1000 if self.mode == "reward" else None
        return self.options.get("official_max_words", default)

    @property
    def length_penalty_k(self) -> int | None:
        """K of the official length penalty; None (or < 0, the official -1) is off, the official default."""
        k = self.options.get("length_penalty_k")
        try:
            return None if k is None or int(k) < 0 else int(k)
        except (TypeError, ValueError):
            raise BenchmarkError(f"wildbench: length_penalty_k must be an integer (-1 or none: off), got {k!r}") from None

    def tasks(self, items, generations, protocol) -> list[JudgeTask]:
        max_words = self.options.get("max_words", 2000) if protocol == "paper" else self.official_max_words
        cut = prompts.truncate_words if protocol == "paper" else shorten_official
        max_tokens = int(self.options.get("judge_max_tokens", 1024))
        out = []
        for item, answer in answered(items, generations):
            msgs = item.messages
            checklist = "\n".join(f"- {c}" for c in item.reference["checklist"]) or "(none)"
            common = {"history": cut(_history(msgs), max_words),
                      "query": cut(msgs[-1]["content"], max_words), "checklist": checklist}
            if protocol == "paper":
                model = cut(answer, max_words)
            else:
                model = shown_official(answer, max_words, empty_marker=self.mode == "reward")
            if self.mode == "score":
                text = prompts.WILDBENCH_SCORE_USER.format(**common, response=model)
                out.append(JudgeTask(item.id, "score", JudgePrompt(prompts.user(text), max_tokens),
                                     PARSERS[self.parsing]["score"], {}))
                continue
            ref = (cut(item.reference["reference_answer"], max_words) if protocol == "paper"
                   else shown_official(item.reference["reference_answer"], max_words))
            candidate = self.order_rng(item.id, "order").choice("AB")
            a, b = (model, ref) if candidate == "A" else (ref, model)
            text = prompts.WILDBENCH_PAIR_USER.format(**common, response_a=a, response_b=b)
            out.append(JudgeTask(item.id, f"candidate-{candidate}", JudgePrompt(prompts.user(text), max_tokens),
                                 PARSERS[self.parsing]["reward"], {"candidate": candidate}))
        return out

    def item_reward(self, choice: str, candidate: str, len_model: int, len_ref: int, protocol: str) -> int:
        """The model's reward for one verdict, with the official length penalty when it applies
        (lengths: characters of the answers as shown to the judge, stripped)."""
        reward = REWARD[choice] if candidate == "A" else -REWARD[choice]
        k = self.length_penalty_k
        if protocol == "official" and k is not None and abs(reward) == 50:
            winner_len, loser_len = (len_model, len_ref) if reward > 0 else (len_ref, len_model)
            if winner_len - loser_len > k:
                return 0
        return reward

    def official_excluded(self, item: Item, answer: str) -> str | None:
        """Why the official tables leave an item out of the counts (reward: of win/tie/loss, so it
        scores 0 in the denominator; score: of the task categories only), or None."""
        max_words = self.official_max_words
        if self.mode == "reward":
            shown = {"answer": shown_official(answer, max_words).strip(),
                     "reference": shown_official(item.reference["reference_answer"], max_words).strip()}
            for who, text in shown.items():
                if text.endswith(TRUNCATED):
                    return f"{who}-truncated"
                if text == EMPTY:
                    return f"{who}-empty"
            return None
        shown_answer = shown_official(answer, max_words, empty_marker=False).strip()
        if shown_answer.endswith(TRUNCATED):
            return "answer-truncated"
        return "answer-empty" if not shown_answer else None

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        per_item, values = [], []
        dist: dict[str, int] = {}
        by_group: dict[str, list[float]] = {}
        excluded: dict[str, int] = {}
        n_in_groups = 0  # items counted in the task categories
        official = protocol == "official"
        max_words = self.official_max_words
        for item in items:
            groups = task_groups([item.reference.get("primary_tag")] + list(item.reference.get("secondary_tags") or []))
            answer = answer_of(generations.get(item.id))
            if answer is None:
                per_item.append(ItemScore(item.id, None, {"failure": "generation"}))
                values.append(-100.0)
                n_in_groups += 1
                for g in groups:
                    by_group.setdefault(g, []).append(-100.0)
                continue
            ok = [r for r in judgments.get(item.id, []) if r["ok"]]
            if not ok:
                per_item.append(ItemScore(item.id, None, {"failure": "judge"}))
                continue
            r = ok[0]
            why = self.official_excluded(item, answer) if official else None
            if why:
                excluded[why] = excluded.get(why, 0) + 1
            if self.mode == "score":
                value = (float(r["parsed"]) - 5.0) * 2.0 * 10.0
                details = {"raw_score": r["parsed"]}
            elif why:  # official: no win, tie or loss, but still counted in the total
                value = 0.0
                details = {"choice": r["parsed"], "candidate": r["candidate"]}
            else:
                if official:
                    len_model = len(shown_official(answer, max_words).strip())
                    len_ref = len(shown_official(item.reference["reference_answer"], max_words).strip())
                else:
                    len_model, len_ref = len(answer), len(item.reference["reference_answer"])
                value = float(self.item_reward(r["parsed"], r["candidate"], len_model, len_ref, protocol))
                details = {"choice": r["parsed"], "candidate": r["candidate"]}
                dist[str(int(value))] = dist.get(str(int(value)), 0) + 1
            if why:
                details["official_excluded"] = why
            else:
                n_in_groups += 1
                for g in groups:
                    by_group.setdefault(g, []).append(value)
            per_item.append(ItemScore(item.id, value, details))
            values.append(value)
        metric = "score" if self.mode == "score" else "reward"
        parsers = PARSERS["official"][self.mode], PARSERS["lenient"][self.mode]
        rescued = sum(1 for rows in judgments.values() for r in rows
                      if r.get("raw") and parsers[0](r["raw"]) is None and parsers[1](r["raw"]) is not None)
        group_means = {g: float(np.mean(v)) for g, v in sorted(by_group.items())}
        extra = {**count_failures(items, generations, judgments), "mode": self.mode,
                 "reply_parsing": self.parsing, "lenient_rescued_replies": rescued,
                 "reference_model": self.options.get("reference_model", "gpt-4"),
                 "length_penalty_k": self.length_penalty_k if official else None,
                 "official_max_words": max_words if official else None,
                 "official_excluded": excluded if official else None,
                 "task_categories": group_means,
                 "reward_distribution": dist,
                 "avg_answer_chars": float(np.mean([len(answer_of(generations.get(i.id)) or "") for i in items]))
                 if items else None}
        headline = mean_metric(values, scale=1.0)
        metrics = {"score": headline, metric: headline}
        if official:
            macro = weighted_macro(group_means) if group_means else float("nan")
            metrics[f"task_macro_{metric}"] = Metric(macro, None, None, n_in_groups)
        return BenchmarkResult(self.name, metrics, n=len(items),
                               n_failed=sum(1 for s in per_item if s.value is None), per_item=per_item,
                               protocol=protocol, metric_version=self.metric_version, extra=extra)
