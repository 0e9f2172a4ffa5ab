"""A tiny model generates and is scored for every rule-based benchmark; the reward win rate on a
real tiny reward model."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rlmt.benchmarks import get_benchmark
from rlmt.benchmarks.base import read_generations
from rlmt.thinking import WARM_NOTHINK, WARM_THINK

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory, data_dir) -> Path:
    """A held-out split in the mixture format, from real WildChat-IF prompts."""
    raw = pl.read_parquet(data_dir / "wildchat-if" / "train.parquet").head(4)
    out = tmp_path_factory.mktemp("mixture")
    pl.DataFrame({
        "id": [f"wc-{i}" for i in range(raw.height)],
        "messages": [[{"role": m["role"], "content": m["content"][:300]} for m in p] for p in raw["prompt"].to_list()],
        "source": ["wildchat-if"] * raw.height,
        "n_tokens": [0] * raw.height,
    }).write_parquet(out / "val.parquet")
    return out


@pytest.fixture(scope="module")
def scorer(tiny_zoo):
    from rlmt.rewards import AnswerRewardScorer

    return AnswerRewardScorer(tiny_zoo["reward"], WARM_NOTHINK, device="cpu")


def _generate(model_dir, items, out, fmt=None, generator=None):
    from rlmt.generation import SamplingParams, generate_file

    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    generate_file(model_dir, [(i.id, i.messages) for i in items], out, params, backend="transformers",
                  device="cpu", fmt=fmt, generator=generator, progress=False)
    return read_generations(out)


@pytest.mark.slow
def test_tiny_model_generates_and_is_scored_on_every_benchmark(tiny_zoo, data_dir, mixture_dir, scorer, tmp_path):
    from rlmt.generation import make_generator

    policy = make_generator("transformers", tiny_zoo["llama-instruct"], device="cpu", batch_size=4)
    benches = {"demo-if": None, "ifeval": data_dir, "ifbench": data_dir, "mmlu-redux": data_dir, "math-500": data_dir,
               "zebralogic": data_dir, "popqa": FIXTURES, "reward-winrate": None}
    for name, where in benches.items():
        bench = get_benchmark(name, mixture_dir=str(mixture_dir)) if name == "reward-winrate" else get_benchmark(name)
        items = bench.load_items(where, limit=3)
        assert len(items) == 3
        gens = _generate(tiny_zoo["llama-instruct"], items, tmp_path / name / "generations.jsonl", generator=policy)
        assert set(gens) == {i.id for i in items}
        ctx = {}
        if name == "reward-winrate":
            ref = _generate(tiny_zoo["qwen-instruct"], items, tmp_path / name / "reference.jsonl")
            ctx = {"reference_generations": ref, "scorer": scorer}
        result = bench.score(items, gens, **ctx)
        # a non-thinking model always has an answer: only an undecidable IF prompt (nltk data
        # missing for one of its instructions) may be failed
        assert result.n == 3 and result.n_failed == result.extra.get("n_undecidable_prompts", 0), name
        assert 0.0 <= result.metrics["score"].value <= 100.0
        assert len(result.per_item) == 3

    # the same model read as a thinking model: its thought never ends, so every item is failed
    bench = get_benchmark("demo-if")
    items = bench.load_items(None, limit=3)
    gens = _generate(tiny_zoo["llama-instruct"], items, tmp_path / "think" / "generations.jsonl", fmt=WARM_THINK,
                     generator=policy)
    policy.close()
    # an answer exists exactly when the thought was closed
    assert all(g["answer_found"] == (WARM_THINK.longcot_delimiter in g["output"]) for g in gens.values())
    unfinished = {i for i, g in gens.items() if not g["answer_found"]}
    result = bench.score(items, gens)
    assert result.extra["n_no_answer"] == len(unfinished) and result.n_failed >= len(unfinished)
    assert all(s.value is None for s in result.per_item if s.id in unfinished)
    # the headline counts every unfinished item as 0 next to the decided ones' pass/fail
    headline = result.extra["headline"]  # prompt_strict or prompt_loose
    decided = [s.details[headline] for s in result.per_item if s.id not in unfinished and s.details[headline] is not None]
    assert result.metrics["score"].n == len(unfinished) + len(decided)
    assert result.metrics["score"].value == pytest.approx(100 * sum(map(float, decided)) / (len(unfinished) + len(decided)))


def _reward_alone(model_dir, messages, answer) -> float:
    """One unpadded forward of the reward model, written here: the rendering and pooling the
    benchmark's scorer must agree with (its own template, BOS from the template, one label)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    text = tok.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    assert text.startswith(tok.bos_token)
    with torch.no_grad():
        logits = model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits
    assert logits.shape == (1, 1)
    return float(logits[0, 0])


def test_reward_winrate_against_the_reward_model(mixture_dir, scorer):
    bench = get_benchmark("reward-winrate", mixture_dir=str(mixture_dir))
    items = bench.load_items(None)
    assert len(items) == 4 and items[0].messages[-1]["role"] == "user"
    answers = ["Sure, here is a careful and complete answer.", "no", "I think so.", "Here are three points: one, two."]
    refs = ["ok", "A long and thoughtful reply with details.", "I think so.", "maybe"]
    gens = {i.id: {"id": i.id, "answer": a, "answer_found": True} for i, a in zip(items, answers)}
    ref_gens = {i.id: {"id": i.id, "answer": a, "answer_found": True} for i, a in zip(items, refs)}
    result = bench.score(items, gens, reference_generations=ref_gens, scorer=scorer)

    # the rewards are the reward model's scores of each answer alone, one forward each (fp32
    # round-off between batch shapes stays far below 1e-4)
    rm = scorer.reward_model_dir
    policy = [_reward_alone(rm, i.messages, a) for i, a in zip(items, answers)]
    reference = [_reward_alone(rm, i.messages, a) for i, a in zip(items, refs)]
    assert [s.details["policy_reward"] for s in result.per_item] == pytest.approx(policy, abs=1e-4)
    assert [s.details["reference_reward"] for s in result.per_item] == pytest.approx(reference, abs=1e-4)
    expected = []
    for answer, ref, p, r in zip(answers, refs, policy, reference):
        if answer == ref:
            expected.append(0.5)
            continue
        assert abs(p - r) > 1e-3, "pick answers whose rewards differ beyond round-off"
        expected.append(1.0 if p > r else 0.0)
    assert [s.value for s in result.per_item] == expected
    assert expected[2] == 0.5  # the same answer to the same prompt ties
    assert result.metrics["win_rate"].value == pytest.approx(100 * sum(expected) / 4)
    assert result.extra["n_identical_answers"] == 1 and result.extra["tie_tolerance"] == 1e-4
    assert "identical reward-model inputs tie" in result.extra["tie_rule"] and result.metric_version == "5"
    # every pair answered: the both-answered win rate is the win rate, over the same 4 items
    assert result.metrics["win_rate_both_answered"].value == pytest.approx(100 * sum(expected) / 4)
    assert result.metrics["win_rate_both_answered"].n == 4

    # identical answers everywhere: exactly 50 %; a policy without an answer loses and is failed
    same = bench.score(items, ref_gens, reference_generations=ref_gens, scorer=scorer)
    assert same.metrics["score"].value == 50.0 and same.extra["n_ties"] == 4
    gens[items[0].id] = {"id": items[0].id, "answer": "", "answer_found": False}
    ref_gens[items[1].id] = {"id": items[1].id, "answer": "", "answer_found": False}
    res = bench.score(items, gens, reference_generations=ref_gens, scorer=scorer)
    assert res.n_failed == 1 and res.per_item[0].value is None and res.per_item[1].value == 1.0
    assert res.extra["n_reference_no_answer"] == 1 and res.extra["n_neither_answered"] == 0
    # only items 2 and 3 have two answers: the unanswered reference's free win is not in it
    assert res.metrics["win_rate_both_answered"].n == 2
    assert res.metrics["win_rate_both_answered"].value == pytest.approx(100 * (expected[2] + expected[3]) / 2)
    # neither answered: a tie, not a loss (a policy failing exactly as its start did has not lost to it)
    ref_gens[items[0].id] = {"id": items[0].id, "answer": "", "answer_found": False}
    both = bench.score(items, gens, reference_generations=ref_gens, scorer=scorer)
    assert both.per_item[0].value == 0.5 and both.per_item[0].details["neither_answered"] is True
    assert both.n_failed == 0 and both.extra["n_neither_answered"] == 1 and both.per_item[1].value == 1.0

    from rlmt.benchmarks.base import BenchmarkError
    from rlmt.rewards import AnswerRewardScorer

    with pytest.raises(BenchmarkError, match="non-thinking format"):
        bench.score(items, gens, reference_generations=ref_gens,
                    scorer=AnswerRewardScorer(scorer.reward_model_dir, WARM_THINK, device="cpu"))


def _rows(items, answers) -> dict[str, dict]:
    return {i.id: {"id": i.id, "answer": a, "answer_found": True} for i, a in zip(items, answers)}


def test_identical_answers_tie_whatever_the_batching(mixture_dir, scorer):
    """Tie by construction: with no tolerance at all, a shared answer ties although the other
    answers change the padded batches it would be scored in (where one input's reward differs in
    its last bits from row to row); a tolerance wider than every margin makes every pair a tie."""
    items = get_benchmark("reward-winrate", mixture_dir=str(mixture_dir)).load_items(None)
    exact = get_benchmark("reward-winrate", mixture_dir=str(mixture_dir), tie_tolerance="0")
    answers = ["I think so.", "no", "Sure, here is a careful and complete answer.", "Three points: one, two, three."]
    res = exact.score(items, _rows(items, answers), reference_generations=_rows(items, answers), scorer=scorer)
    assert [s.value for s in res.per_item] == [0.5] * 4 and res.extra["n_identical_answers"] == 4
    for other in ("ok", "A long and thoughtful reply with details, examples, caveats and a summary at the end."):
        reference = [answers[0], other, answers[2], other]  # items 0 and 2 share the policy's answer
        res = exact.score(items, _rows(items, answers), reference_generations=_rows(items, reference), scorer=scorer)
        for k in (0, 2):
            s = res.per_item[k]
            assert s.value == 0.5 and s.details["policy_reward"] == s.details["reference_reward"], (other, k)
        assert res.extra["n_identical_answers"] == 2 and res.extra["tie_tolerance"] == 0.0
        assert all(s.value in (0.0, 1.0) for k, s in enumerate(res.per_item) if k in (1, 3))

    lenient = get_benchmark("reward-winrate", mixture_dir=str(mixture_dir), tie_tolerance=1e9)
    reference = ["ok", "A long and thoughtful reply.", "maybe", "no"]
    res = lenient.score(items, _rows(items, answers), reference_generations=_rows(items, reference), scorer=scorer)
    assert res.metrics["score"].value == 50.0 and res.extra["n_identical_answers"] == 0

    from rlmt.benchmarks.base import BenchmarkError

    for bad in ("-1", "nan", "tight"):
        with pytest.raises(BenchmarkError, match="option 'tie_tolerance'"):
            get_benchmark("reward-winrate", mixture_dir=str(mixture_dir), tie_tolerance=bad).score(
                items, _rows(items, answers), reference_generations=_rows(items, reference), scorer=scorer)


def test_reward_winrate_reads_the_tuning_split_when_asked_and_never_another(mixture_dir, tmp_path):
    """Option split: tune reads <mixture_dir>/tune.parquet (hyperparameters chosen there never see the evaluation
    prompts); the default is val; any other split (train: the training prompts) is refused."""
    from rlmt.benchmarks.base import BenchmarkError

    tune = pl.read_parquet(mixture_dir / "val.parquet").with_columns(pl.col("id").str.replace("wc-", "tune-"))
    tune.head(2).write_parquet(mixture_dir / "tune.parquet")
    assert [i.id for i in get_benchmark("reward-winrate", mixture_dir=str(mixture_dir)).load_items(None)] == \
        ["wc-0", "wc-1", "wc-2", "wc-3"]
    tuned = get_benchmark("reward-winrate", mixture_dir=str(mixture_dir), split="tune").load_items(None)
    assert [i.id for i in tuned] == ["tune-0", "tune-1"]
    with pytest.raises(BenchmarkError, match="option 'split' must be one of"):
        get_benchmark("reward-winrate", mixture_dir=str(mixture_dir), split="train").load_items(None)
    (mixture_dir / "tune.parquet").unlink()
