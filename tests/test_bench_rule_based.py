"""The rule-based benchmarks on real items from ../shared/data: gold answers score 100 %, shuffled
answers score near chance, thoughts never count, and a thought that never ended is a failure."""

from __future__ import annotations

import json
import random

import pytest

from rlmt.benchmarks import get_benchmark
from rlmt.benchmarks.base import Item
from rlmt.thinking import WARM_THINK, extract, format_output


def row(item_id: str, answer: str, thought: str = "Let me think about it.") -> dict:
    """A generations row as the generation stage writes it, from a warm-think raw output."""
    output = format_output(thought, answer, WARM_THINK)
    ex = extract(output, WARM_THINK)
    return {"id": item_id, "output": output, "answer": ex.answer, "thought": ex.thought,
            "answer_found": ex.answer_found, "well_formed": ex.well_formed, "finish_reason": "stop"}


def unfinished(item_id: str, thought: str) -> dict:
    """A row whose thought never ended (truncated at the token limit)."""
    output = "<think>\n" + thought
    ex = extract(output, WARM_THINK)
    assert not ex.answer_found
    return {"id": item_id, "output": output, "answer": ex.answer, "thought": ex.thought,
            "answer_found": False, "well_formed": False, "finish_reason": "length"}


# ---------------------------------------------------------------------- MMLU-Redux


def test_mmlu_redux_protocols_gold_shuffled_and_failed(data_dir):
    bench = get_benchmark("mmlu-redux")
    items = bench.load_items(data_dir)
    assert len(items) == 5700
    assert sum(i.reference["paper_answer"] is not None for i in items) == 5376
    assert items[0].messages[0]["content"].endswith('Mark your final uppercase letter answer after "Answer:"')

    # Gold (paper labels; original label where the paper drops the question). The thought names a
    # wrong letter: only the answer may count.
    gold = {}
    for item in items:
        letter = item.reference["paper_answer"] or item.reference["answer"]
        wrong = "A" if letter != "A" else "B"
        gold[item.id] = row(item.id, f"Reasoning done.\nAnswer: {letter}", thought=f"Answer: {wrong}")
    result = bench.score(items, gold)
    assert result.metrics["score"].value == 100.0
    assert result.metrics["accuracy_paper"].n == 5376
    relabelled = sum(1 for i in items if i.reference["paper_answer"] not in (None, i.reference["answer"]))
    assert relabelled == 46
    assert result.metrics["accuracy_full"].value == pytest.approx(100 * (5700 - 46) / 5700)
    assert result.n_failed == 0

    rng = random.Random(0)
    shuffled = {i.id: row(i.id, f"Answer: {rng.choice('ABCD')}") for i in items}
    chance = bench.score(items, shuffled).metrics["score"]
    assert 22 < chance.value < 28
    assert chance.ci_low < 25 < chance.ci_high or abs(chance.value - 25) < 2

    sample = items[:40]
    failed = {i.id: unfinished(i.id, f"Answer: {i.reference['answer']}") for i in sample[:10]}
    failed.update({i.id: gold[i.id] for i in sample[10:]})
    res = bench.score(sample, failed)
    assert res.n_failed == 10
    assert res.metrics["accuracy_full"].value == pytest.approx(100 * sum(
        1 for i in sample[10:] if (i.reference["paper_answer"] or i.reference["answer"]) == i.reference["answer"]) / 40)
    assert [s.details.get("reason") for s in res.per_item[:10]] == ["thought-never-ended"] * 10


# ---------------------------------------------------------------------- MATH-500


def test_math500_gold_equivalent_forms_and_shuffled(data_dir):
    bench = get_benchmark("math-500")
    items = bench.load_items(data_dir, limit=40, seed=1)
    assert len(items) == 40 and "\\boxed{}" in items[0].messages[0]["content"]
    gold = {i.id: row(i.id, f"So the result is \\boxed{{0}} at first, but finally \\boxed{{{i.reference['answer']}}}.")
            for i in items}
    assert bench.score(items, gold).metrics["score"].value == 100.0
    answers = [i.reference["answer"] for i in items]
    shuffled = {i.id: row(i.id, f"\\boxed{{{a}}}") for i, a in zip(items, answers[1:] + answers[:1])}
    assert bench.score(items, shuffled).metrics["score"].value <= 10
    # math-verify equivalence: a decimal for a fraction, no box at all
    half = Item("h", [], {"answer": "\\frac{1}{2}"})
    res = bench.score([half, Item("n", [], {"answer": "3"})], {"h": row("h", "\\boxed{0.5}"), "n": row("n", "It is 3.")})
    assert [s.value for s in res.per_item] == [1.0, 0.0]
    assert res.extra["n_no_boxed"] == 1


# ---------------------------------------------------------------------- ZebraLogic


def _grid_answer(grid: dict) -> str:
    return "Here is my solution:\n```json\n" + json.dumps({"reasoning": "deduced", "solution": grid}) + "\n```"


def test_zebralogic_puzzle_and_cell_accuracy(data_dir):
    bench = get_benchmark("zebralogic")
    items = bench.load_items(data_dir, limit=30)
    assert '"House 1"' in items[0].messages[0]["content"]
    gold = {i.id: row(i.id, _grid_answer(i.reference["grid"])) for i in items}
    res = bench.score(items, gold)
    assert res.metrics["puzzle_accuracy"].value == 100.0 and res.metrics["cell_accuracy"].value == 100.0

    # one puzzle with two names swapped: puzzle wrong, cells (total - 2) / total
    item = items[0]
    grid = json.loads(json.dumps(item.reference["grid"]))
    grid["House 1"]["Name"], grid["House 2"]["Name"] = grid["House 2"]["Name"], grid["House 1"]["Name"]
    one = bench.score([item], {item.id: row(item.id, _grid_answer(grid))})
    total = sum(len(v) for v in item.reference["grid"].values())
    assert one.metrics["puzzle_accuracy"].value == 0.0
    assert one.metrics["cell_accuracy"].value == pytest.approx(100 * (total - 2) / total)

    # shuffled: every puzzle answered with another puzzle's grid
    shuffled = {a.id: row(a.id, _grid_answer(b.reference["grid"])) for a, b in zip(items, items[1:] + items[:1])}
    res = bench.score(items, shuffled)
    assert res.metrics["puzzle_accuracy"].value == 0.0
    assert res.metrics["cell_accuracy"].value < 35
    unparsed = bench.score([item], {item.id: row(item.id, "I could not solve it.")})
    assert unparsed.extra["n_unparsed"] == 1 and unparsed.n_failed == 0


# ---------------------------------------------------------------------- PopQA


def test_popqa_alias_match_on_official_fixture(tmp_path):
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    bench = get_benchmark("popqa")
    items = bench.load_items(fixtures)
    assert len(items) == 12 and "100 words" in items[0].messages[0]["content"]
    gold = {i.id: row(i.id, f"It is {i.reference['aliases'][-1].lower()}, as far as I know.") for i in items}
    assert bench.score(items, gold).metrics["score"].value == 100.0
    shuffled = {a.id: row(a.id, f"The answer is {b.reference['aliases'][0]}.") for a, b in zip(items, items[3:] + items[:3])}
    assert bench.score(items, shuffled).metrics["score"].value <= 10
    # the gold alias only in the thought does not count
    thought_only = {i.id: row(i.id, "I do not know.", thought=i.reference["aliases"][0]) for i in items}
    assert bench.score(items, thought_only).metrics["score"].value == 0.0


def test_popqa_bad_aliases_are_named(tmp_path):
    from rlmt.benchmarks.base import BenchmarkError

    (tmp_path / "popqa").mkdir()
    (tmp_path / "popqa" / "test.jsonl").write_text(json.dumps({"id": 7, "question": "Q?", "possible_answers": "[1, 2]"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"id 7\): bad possible_answers"):
        get_benchmark("popqa").load_items(tmp_path)


# ---------------------------------------------------------------------- IFEval

IFEVAL_ANSWERS = {  # key -> (a response that follows every instruction, one that follows none)
    "1132": ("THE GREAT ROCKY MOUNTAINS ARE TALL.".replace("ROCKY ", ""), "the rock is big"),
    "1137": ('{"answer": "bon appetit"}', "nourriture is food"),
    "1436": ("all lowercase and calm.", "Dead of Night"),
    "1466": ('"a quoted answer about music"', "Taylor Swift sings"),
    "1508": ("forests hide a riddle.", "Trees, mostly."),
    "1516": ("i watch netflix every evening because the shows are fun and relaxing.", "I Watch TV"),
    "1658": ('"python and java are languages"', "Ruby"),
}


def _ifeval_items(data_dir):
    bench = get_benchmark("ifeval")
    return bench, {i.id: i for i in bench.load_items(data_dir)}


def test_ifeval_gold_and_wrong_answers(data_dir):
    bench, by_id = _ifeval_items(data_dir)
    assert len(by_id) == 541
    items = [by_id[k] for k in IFEVAL_ANSWERS]
    gold = bench.score(items, {k: row(k, good) for k, (good, _) in IFEVAL_ANSWERS.items()})
    assert gold.metrics["score"].value == 100.0
    assert gold.metrics["instruction_loose"].value == 100.0
    wrong = bench.score(items, {k: row(k, bad) for k, (_, bad) in IFEVAL_ANSWERS.items()})
    assert wrong.metrics["prompt_strict"].value == 0.0
    assert wrong.metrics["instruction_strict"].value == 0.0
    failed = bench.score(items, {k: unfinished(k, good) for k, (good, _) in IFEVAL_ANSWERS.items()})
    assert failed.n_failed == len(items) and failed.metrics["score"].value == 0.0


def test_ifeval_sentence_checker_without_punkt_is_unscorable(data_dir):
    from rlmt.benchmarks.ifeval import nltk_resource_available

    bench, by_id = _ifeval_items(data_dir)
    item = by_id["1265"]  # keywords:existence + length_constraints:number_sentences
    keywords = item.reference["kwargs"][0]["keywords"]
    follows = row("1265", " ".join(keywords) + " are here.")
    misses = row("1265", "Nothing relevant.")
    if nltk_resource_available("tokenizers/punkt_tab"):
        pytest.skip("punkt_tab is installed here: the checker is scorable")
    res = bench.score([item], {"1265": follows})
    assert res.per_item[0].value is None and res.n_failed == 1
    assert res.extra["n_unscorable_instructions"] == 1
    assert res.extra["unscorable_reasons"] == {"nltk-data-missing:length_constraints:number_sentences": 1}
    assert res.metrics["instruction_strict"].n == 1 and res.metrics["instruction_strict"].value == 100.0
    assert res.metrics["prompt_strict"].n == 0
    # another instruction failed: the prompt fails for certain, whatever the sentence count
    res = bench.score([item], {"1265": misses})
    assert res.per_item[0].value == 0.0 and res.metrics["prompt_strict"].n == 1


def test_ifeval_agrees_with_lm_eval_on_every_prompt(data_dir):
    """Our instruction-by-instruction scores equal lm-eval's whole-prompt functions wherever
    lm-eval can run (prompts without a punkt-dependent instruction when punkt is absent)."""
    import langdetect

    from rlmt.benchmarks.ifeval import lm_eval_registry, nltk_resource_available

    lm_eval_registry()  # our guarded import first: importing lm-eval directly would try to download
    from lm_eval.tasks.ifeval import utils as lm

    langdetect.DetectorFactory.seed = 0
    bench, by_id = _ifeval_items(data_dir)
    needs_punkt = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
    punkt = nltk_resource_available("tokenizers/punkt_tab")

    def lm_eval_is_deterministic(item):  # a non-letter `letter` makes lm-eval check a random one
        return all(not (kw.get("letter") and not kw["letter"].isalpha()) for kw in item.reference["kwargs"])

    items = [i for i in by_id.values()
             if (punkt or not needs_punkt & set(i.reference["instruction_id_list"])) and lm_eval_is_deterministic(i)]
    assert len(items) > 450
    responses = [IFEVAL_ANSWERS["1658"][0],
                 "*Title*\n\n<<A Title>>\nSECTION 1\nsome text, with a comma.\n\n***\n\nP.S. bye"]
    compared = agree = 0
    for k, response in enumerate(responses):
        gens = {i.id: row(i.id, response if k else i.reference["prompt"]) for i in items}
        result = bench.score(items, gens)
        for item, score in zip(items, result.per_item):
            ref = item.reference
            inp = lm.InputExample(key=int(item.id), instruction_id_list=ref["instruction_id_list"],
                                  prompt=ref["prompt"], kwargs=ref["kwargs"])
            answer = gens[item.id]["answer"]
            strict = lm.test_instruction_following_strict(inp, answer)
            loose = lm.test_instruction_following_loose(inp, answer)
            ours_strict = [slot["strict"] for slot in score.details["instructions"]]
            ours_loose = [slot["loose"] for slot in score.details["instructions"]]
            compared += 1
            agree += (ours_strict == strict.follow_instruction_list and ours_loose == loose.follow_instruction_list
                      and score.details["prompt_strict"] == strict.follow_all_instructions
                      and score.details["prompt_loose"] == loose.follow_all_instructions)
    assert compared > 900
    assert agree == compared


# ---------------------------------------------------------------------- IFBench


IFBENCH_ANSWERS = {  # instruction id -> (follows, does not follow), on the first real item with that id alone
    "format:no_whitespace": ("Yes,allsetsareclasses.", "Yes, all sets are classes."),
    "format:options": ("maybe", "It depends on the game."),
    "custom:multiples": ("14\n21\n28\n35\n42\n49", "7 14 21 28 35 42 49"),
    "words:words_position": (None, "Plain words only here"),
}


def test_ifbench_real_items_gold_wrong_and_unknown_ids(data_dir):
    bench = get_benchmark("ifbench")
    items = bench.load_items(data_dir)
    assert len(items) == 294
    chosen, gens_good, gens_bad = [], {}, {}
    for iid, (good, bad) in IFBENCH_ANSWERS.items():
        item = next(i for i in items if i.reference["instruction_id_list"] == [iid])
        chosen.append(item)
        if good is None:  # words:words_position needs the item's own keyword
            kw = item.reference["kwargs"][0]["keyword"]
            good = f"A {kw} morning turns {kw} now"
        gens_good[item.id] = row(item.id, good)
        gens_bad[item.id] = row(item.id, bad)
    assert bench.score(chosen, gens_good).metrics["score"].value == 100.0
    assert bench.score(chosen, gens_bad).metrics["score"].value == 0.0

    odd = Item("x", [{"role": "user", "content": "p"}],
               {"prompt": "p", "instruction_id_list": ["format:no_whitespace", "made:up"], "kwargs": [{}, {}]})
    res = bench.score([odd], {"x": row("x", "nospaces")})
    assert res.per_item[0].value is None and res.extra["unscorable_reasons"] == {"unknown-instruction:made:up": 1}
    res = bench.score([odd], {"x": row("x", "has spaces")})
    assert res.per_item[0].value == 0.0  # the known instruction failed: certain prompt failure


# ---------------------------------------------------------------------- demo-if


def test_demo_if_resource_scores_with_ifeval_checkers():
    bench = get_benchmark("demo-if")
    items = bench.load_items(None)
    assert len(items) == 50
    first = items[0]  # 4 markdown bullets, no commas
    assert first.reference["instruction_id_list"] == ["detectable_format:number_bullet_lists", "punctuation:no_comma"]
    good = "* Knock and say hi\n* Mention the noise kindly\n* Suggest quiet hours\n* Thank them"
    res = bench.score([first], {first.id: row(first.id, good)})
    assert res.metrics["score"].value == 100.0
    res = bench.score([first], {first.id: row(first.id, "* One, two\n* Three")})
    assert res.metrics["instruction_strict"].value == 0.0
