"""IFEval (541 prompts with verifiable instructions), scored with lm-eval's own instruction checkers.

We do not re-implement the checkers: the numbers must equal lm-eval's. What we change is the
*granularity*: lm-eval's whole-prompt functions (``test_instruction_following_strict/loose``) run
all instructions of a prompt in one go, so one checker that raises takes every other instruction of
that prompt with it. Here each instruction is checked on its own, with exactly lm-eval's rule
(kwargs with falsy values dropped; prompt-dependent checkers rebuilt with the prompt; an empty
response fails; "loose" tries lm-eval's eight response variants).

Offline traps (measured):

* importing ``lm_eval.tasks.ifeval.instructions_util`` calls ``nltk.download("punkt_tab")`` when
  the tokenizer is absent, and prints "Downloaded punkt_tab" even when that failed. We never let
  it reach the network: when punkt_tab is missing the download is refused during the import;
  ``rlmt data fetch-benchmarks`` fetches it on a networked machine into ``<data_dir>/nltk_data``,
  which is added to nltk's search path.
* without punkt_tab, ``length_constraints:number_sentences`` and
  ``change_case:capital_word_frequency`` raise ``LookupError``. Such an instruction is
  *unscorable*: reported and counted (``extra.n_unscorable_instructions``), excluded from the
  instruction-level denominators, never passed or failed silently. A prompt whose other
  instructions already failed is still a (certain) prompt-level failure; otherwise the prompt is
  undecidable and excluded from the prompt-level denominators.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar

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
    read_json_rows,
    register,
)

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


class Unscorable(Exception):
    """An instruction that cannot be checked here (unknown id, missing tokenizer data)."""


# ---------------------------------------------------------------------- lm-eval, offline


def add_nltk_data_dir(data_dir: Path | None) -> None:
    """Let nltk find what ``rlmt data fetch-benchmarks`` put in ``<data_dir>/nltk_data``."""
    if data_dir is None:
        return
    import nltk

    candidate = str(Path(data_dir) / "nltk_data")
    if Path(candidate).is_dir() and candidate not in nltk.data.path:
        nltk.data.path.insert(0, candidate)


def nltk_resource_available(name: str) -> bool:
    import nltk

    try:
        nltk.data.find(name)
    except LookupError:
        return False
    return True


@lru_cache(maxsize=1)
def lm_eval_registry() -> dict[str, type]:
    """lm-eval's IFEval ``INSTRUCTION_DICT``, imported without any download attempt."""
    import nltk

    refused: list[str] = []

    def refuse_download(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        refused.append(str(info_or_id))
        return False

    real_download = nltk.download
    nltk.download = refuse_download
    try:
        # lm-eval prints a success message whatever happened; keep it out of our output.
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_registry
    finally:
        nltk.download = real_download
    return dict(instructions_registry.INSTRUCTION_DICT)


def lm_eval_checker(instruction_id: str, kwargs: dict, prompt: str, *, seed: int = 0) -> Callable[[str], bool]:
    """One lm-eval instruction, built exactly as lm-eval's whole-prompt functions build it (kwargs
    with falsy values dropped, prompt-dependent checkers rebuilt with the prompt), returned as
    ``check(response) -> bool`` (an empty response fails).

    lm-eval draws a *random* value where a kwarg is unusable (two IFEval prompts give a
    ``letter`` of "!" and "#", so lm-eval checks a random letter, differently on every run); the
    draw is seeded here so a rerun scores the same.
    """
    registry = lm_eval_registry()
    if instruction_id not in registry:
        raise Unscorable(f"unknown-instruction:{instruction_id}")
    instruction = registry[instruction_id](instruction_id)
    state = random.getstate()
    random.seed(seed)
    try:
        instruction.build_description(**{k: v for k, v in (kwargs or {}).items() if v})
        args = instruction.get_instruction_args()
        if args and "prompt" in args:
            instruction.build_description(prompt=prompt)
    finally:
        random.setstate(state)

    def check(response: str) -> bool:
        try:
            return bool(response.strip() and instruction.check_following(response))
        except LookupError as err:  # nltk data missing (punkt_tab)
            raise Unscorable(f"nltk-data-missing:{instruction_id}") from err

    return check


def loose_variants(response: str) -> list[str]:
    """lm-eval's eight "loose" variants: drop the first/last line, drop ``*`` markup."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    base = [response, without_first, without_last, without_both]
    return [base[0], base[0].replace("*", ""), without_first, without_last, without_both,
            without_first.replace("*", ""), without_last.replace("*", ""), without_both.replace("*", "")]


# ---------------------------------------------------------------------- data


def read_instruction_rows(path: Path) -> list[dict]:
    """IFEval-format rows (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) from a JSON
    list (the reference code's ``data.json``) or JSON lines (upstream ``input_data.jsonl``)."""
    rows = read_json_rows(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a list of rows")
    for i, row in enumerate(rows):
        missing = {"key", "prompt", "instruction_id_list", "kwargs"} - set(row)
        if missing:
            raise BenchmarkError(f"{path}: row {i} lacks {sorted(missing)}")
        if len(row["instruction_id_list"]) != len(row["kwargs"]):
            raise BenchmarkError(f"{path}: row {i} (key {row['key']}): "
                                 "instruction_id_list and kwargs differ in length")
    return rows


def find_data_file(data_dir: Path | None, folder: str, names: tuple[str, ...], bench: str) -> Path:
    """The first of ``names`` found in ``<data_dir>/benchmarks/<folder>`` or ``<data_dir>/<folder>``.

    ``data_dir`` is the project's data directory (``../shared/data`` layout: benchmarks under
    ``benchmarks/``, what ``rlmt data fetch-benchmarks`` writes) or a benchmarks folder itself.
    """
    if data_dir is None:
        raise BenchmarkError(f"{bench}: no data directory (set data_dir in the config, $RLMT_DATA_DIR "
                             "or --data-dir; `rlmt data fetch-benchmarks --out DIR` downloads it)")
    folders = [Path(data_dir) / "benchmarks" / folder, Path(data_dir) / folder]
    for base in folders:
        for name in names:
            if (base / name).exists():
                return base / name
    raise BenchmarkError(f"{bench}: none of {list(names)} found in {folders[0]} or {folders[1]}")


def rows_to_items(rows: list[dict]) -> list[Item]:
    return [Item(id=str(row["key"]), messages=[{"role": "user", "content": row["prompt"]}],
                 reference={"prompt": row["prompt"], "instruction_id_list": list(row["instruction_id_list"]),
                            "kwargs": [dict(k or {}) for k in row["kwargs"]]})
            for row in rows]


# ---------------------------------------------------------------------- scoring


class InstructionFollowingBenchmark(Benchmark):
    """Shared scoring of IFEval-format benchmarks: instruction by instruction, strict and loose.

    Subclasses say where the items come from and which function checks one instruction
    (``check(instruction_id, kwargs, prompt, response) -> bool``, raising :class:`Unscorable`).
    The headline metric is prompt-level strict accuracy (the paper's).
    """

    metric_version: ClassVar[str] = "1"
    headline: ClassVar[str] = "prompt_strict"

    def checker(self, instruction_id: str, kwargs: dict, prompt: str) -> Callable[[str], bool]:
        """``check(response) -> bool`` for one instruction; raises :class:`Unscorable`."""
        raise NotImplementedError

    @staticmethod
    def _check_variants(check: Callable[[str], bool], responses: list[str]) -> bool:
        # Loose passes when any variant passes; an unscorable variant leaves the decision open only
        # if no other variant passed.
        unscorable: Unscorable | None = None
        for response in responses:
            try:
                if check(response):
                    return True
            except Unscorable as err:
                unscorable = err
        if unscorable is not None:
            raise unscorable
        return False

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        per_item: list[ItemScore] = []
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        unscorable_reasons: Counter[str] = Counter()
        n_no_answer = n_undecidable = 0
        for item in items:
            ref = item.reference
            answer = answer_of(generations.get(item.id))
            if answer is None:
                n_no_answer += 1
                for metric in ("prompt_strict", "prompt_loose"):
                    values[metric].append(0.0)
                for metric in ("instruction_strict", "instruction_loose"):
                    values[metric].extend([0.0] * len(ref["instruction_id_list"]))
                per_item.append(failed_score(item.id, generations.get(item.id)))
                continue
            details: dict[str, Any] = {"instructions": [{"id": iid} for iid in ref["instruction_id_list"]]}
            checks: list[Callable[[str], bool] | Unscorable] = []
            for iid, kwargs in zip(ref["instruction_id_list"], ref["kwargs"]):
                try:
                    checks.append(self.checker(iid, kwargs, ref["prompt"]))
                except Unscorable as err:
                    checks.append(err)
            prompt_ok: dict[str, bool | None] = {}
            for mode, variants in (("strict", [answer]), ("loose", loose_variants(answer))):
                results: list[bool | None] = []
                for slot, check in zip(details["instructions"], checks):
                    try:
                        if isinstance(check, Unscorable):
                            raise check
                        ok: bool | None = self._check_variants(check, variants)
                    except Unscorable as err:
                        ok = None
                        if mode == "strict":
                            unscorable_reasons[str(err)] += 1
                    results.append(ok)
                    slot[mode] = ok
                values[f"instruction_{mode}"].extend(float(r) for r in results if r is not None)
                if any(r is False for r in results):
                    prompt_ok[mode] = False
                elif any(r is None for r in results):
                    prompt_ok[mode] = None
                else:
                    prompt_ok[mode] = True
                if prompt_ok[mode] is not None:
                    values[f"prompt_{mode}"].append(float(prompt_ok[mode]))
            details.update({"prompt_strict": prompt_ok["strict"], "prompt_loose": prompt_ok["loose"]})
            if prompt_ok["strict"] is None:
                n_undecidable += 1
                details["reason"] = "unscorable-instruction"
                per_item.append(ItemScore(item.id, None, details))
            else:
                per_item.append(ItemScore(item.id, float(prompt_ok["strict"]), details))
        seed = int(ctx.get("seed", 0))
        metrics = {name: mean_metric(vals, seed=seed) for name, vals in values.items()}
        metrics = {"score": metrics[self.headline], **metrics}
        return BenchmarkResult(
            benchmark=self.name, metrics=metrics, n=len(items), n_failed=n_no_answer + n_undecidable,
            per_item=per_item, metric_version=self.metric_version,
            extra={"n_no_answer": n_no_answer, "n_undecidable_prompts": n_undecidable,
                   "n_unscorable_instructions": sum(unscorable_reasons.values()),
                   "unscorable_reasons": dict(unscorable_reasons), "headline": self.headline},
        )




@register
class IFEval(InstructionFollowingBenchmark):
    """IFEval with lm-eval's checkers; ``data_dir/ifeval/{data.json,input_data.jsonl}``."""

    name: ClassVar[str] = "ifeval"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        add_nltk_data_dir(data_dir)
        path = find_data_file(data_dir, "ifeval", ("data.json", "input_data.jsonl", "data.jsonl"), self.name)
        return limit_items(rows_to_items(read_instruction_rows(path)), limit, seed)

    def checker(self, instruction_id: str, kwargs: dict, prompt: str) -> Callable[[str], bool]:
        return lm_eval_checker(instruction_id, kwargs, prompt)

