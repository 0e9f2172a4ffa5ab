"""`rlmt train rm`: TRL's RewardTrainer learns a preference it can see, held out by id, and the saved
model is a one-label reward model that the answer-only scorer reads unchanged."""

from __future__ import annotations

import json
import random

import pytest

TOPICS = ["rivers", "violins", "glaciers", "tea", "comets", "bridges", "owls", "chess", "volcanoes", "bread",
          "maps", "bees", "deserts", "clocks", "coral", "kites", "salt", "lanterns", "moss", "trains"]


def _pairs(n: int) -> list[dict]:
    """Chosen answers are helpful sentences about the topic; rejected ones refuse. Learnable from the text."""
    rng = random.Random(7)
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        detail = rng.choice(["history", "uses", "science", "care", "origins"])
        pairs.append({
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": f"Tell me about the {detail} of {topic}."}],
            "chosen": f"Here is a clear overview of the {detail} of {topic}: first, the basics; then, examples.",
            "rejected": rng.choice(["No.", "I will not answer that.", "Ask someone else.", "Whatever."]),
        })
    return pairs


def test_split_is_by_id_not_position():
    from rlmt.train.reward_model import split_pairs

    pairs = _pairs(200)
    train, held = split_pairs(pairs, 0.1, seed=0)
    assert len(train) + len(held) == 200 and 8 <= len(held) <= 35
    shuffled = list(reversed(pairs))
    _, held_again = split_pairs(shuffled, 0.1, seed=0)
    assert sorted(p["id"] for p in held_again) == sorted(p["id"] for p in held)
    _, other_seed = split_pairs(pairs, 0.1, seed=1)
    assert {p["id"] for p in other_seed} != {p["id"] for p in held}


def test_training_ids_are_the_scorers_ids(tiny_zoo):
    """The model is trained on exactly the token sequence the answer-only scorer will pool at."""
    from rlmt.models.loading import load_tokenizer
    from rlmt.rewards import AnswerRewardScorer
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train.reward_model import encode

    scorer = AnswerRewardScorer(tiny_zoo["reward"], WARM_NOTHINK, device="cpu")
    tokenizer = load_tokenizer(tiny_zoo["reward"], padding_side="right")
    for p in _pairs(5):
        assert encode(tokenizer, p["prompt"], p["chosen"]) == scorer._encode(p["prompt"], p["chosen"]).ids


@pytest.mark.slow
def test_reward_model_learns_a_held_out_preference(tiny_zoo, tmp_path, one_torch_thread):
    from rlmt.models.loading import load_reward_model
    from rlmt.train.reward_model import RewardModelConfig, pairwise_accuracy, read_pairs, train_reward_model

    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in _pairs(96)))
    cfg = RewardModelConfig(learning_rate=1e-3, epochs=2, batch_size=8, max_length=256, seed=0)
    metrics = train_reward_model(tiny_zoo["llama-instruct"], pairs_path, tmp_path / "rm", cfg)

    out = tmp_path / "rm"
    saved = json.loads((out / "rm_eval.json").read_text())
    assert saved["held_out"] == metrics["held_out"]
    assert saved["train_pairs"] + saved["held_out_pairs"] + saved["dropped_too_long"] == 96
    assert metrics["held_out"]["pairwise_accuracy"] >= 0.9, metrics
    model = load_reward_model(out, device="cpu")
    assert model.config.num_labels == 1 and not list(out.glob("*.bin"))
    # The learned preference generalises to new prompts on new topics, scored by the RL scorer.
    fresh = [{"id": "x", "prompt": [{"role": "user", "content": "Tell me about the uses of ladders."}],
              "chosen": "Here is a clear overview of the uses of ladders: first, the basics; then, examples.",
              "rejected": "No."}]
    assert pairwise_accuracy(out, fresh)["pairwise_accuracy"] == 1.0
    assert len(read_pairs(pairs_path)) == 96

    # Beside the accuracy, the reward's length bias on the same held-out answers, recomputed independently
    # (scipy on the scorer's scores and the reward model tokenizer's answer lengths).
    from scipy.stats import pearsonr, spearmanr

    from rlmt.models.loading import load_tokenizer
    from rlmt.rewards import AnswerRewardScorer
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train.reward_model import split_pairs

    _, held = split_pairs(read_pairs(pairs_path), cfg.eval_fraction, cfg.seed)
    answers = [p["chosen"] for p in held] + [p["rejected"] for p in held]
    scores = AnswerRewardScorer(out, WARM_NOTHINK, device="cpu").score(
        [p["prompt"] for p in held] * 2, answers).scores
    lengths = [len(load_tokenizer(out)(a, add_special_tokens=False)["input_ids"]) for a in answers]
    got = saved["held_out"]
    assert got["n_answers"] == 2 * len(held) == 2 * saved["held_out_pairs"]
    assert got["reward_length_pearson"] == pytest.approx(pearsonr(lengths, scores)[0], abs=1e-4)
    assert got["reward_length_spearman"] == pytest.approx(spearmanr(lengths, scores)[0], abs=1e-4)
    # every chosen answer here is a long sentence and every rejected one a short refusal: the preference is
    # confounded with length, the correlation is positive, and no pair tests a shorter chosen answer
    assert got["reward_length_pearson"] > 0
    assert got["n_chosen_shorter"] == 0 and got["pairwise_accuracy_chosen_shorter"] is None


def test_malformed_pairs_file_names_the_line(tmp_path):
    from rlmt.train.reward_model import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_pairs(1)[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not valid JSON"):
        read_pairs(path)
    path.write_text(json.dumps({"id": 1, "prompt": []}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: a pair needs \['chosen', 'rejected'\]"):
        read_pairs(path)


def test_rm_pairs_from_reference_answers_exclude_shared_prompts(tiny_zoo, data_dir, tmp_path, one_torch_thread):
    """Chosen = the AlpacaEval GPT-4 answer, rejected = the policy's own; a prompt the experiment uses is left out."""
    from rlmt.data.rm_pairs import RMPairsConfig, build_rm_pairs, read_reference

    rows = read_reference(data_dir / "benchmarks" / "alpacaeval2" / "alpaca_eval_gpt4_baseline.json")[:5]
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shared = tmp_path / "eval_items.jsonl"  # the experiment evaluates on rows[2]'s instruction (respaced, recased)
    shared.write_text(json.dumps({"id": "e1", "messages": [
        {"role": "user", "content": "  " + rows[2]["instruction"].upper().replace(" ", "  ") + "\n"}]}) + "\n")

    out = tmp_path / "pairs" / "pairs.jsonl"
    stats = build_rm_pairs(reference, tiny_zoo["llama-instruct"], out, RMPairsConfig(max_new_tokens=8),
                           exclude=[shared])
    pairs = [json.loads(x) for x in out.read_text().splitlines()]
    assert stats["excluded_shared_prompts"] == 1 and stats["used"] == 4
    assert stats["pairs"] + stats["empty_policy_answers"] == 4 == len(pairs) + stats["empty_policy_answers"]
    by_instruction = {r["instruction"]: r["output"] for r in rows}
    assert rows[2]["instruction"] not in {p["prompt"][0]["content"] for p in pairs}
    policy = {json.loads(x)["id"]: json.loads(x)["answer"]
              for x in (tmp_path / "pairs" / "pairs.policy.jsonl").read_text().splitlines()}
    for p in pairs:
        assert p["chosen"] == by_instruction[p["prompt"][0]["content"]]
        assert p["rejected"] == policy[p["id"]].strip() and p["rejected"] != p["chosen"]
    # A rerun generates nothing again: the policy's answers file is complete and left as it is.
    before = (tmp_path / "pairs" / "pairs.policy.jsonl").read_bytes()
    build_rm_pairs(reference, tiny_zoo["llama-instruct"], out, RMPairsConfig(max_new_tokens=8), exclude=[shared])
    assert (tmp_path / "pairs" / "pairs.policy.jsonl").read_bytes() == before

    # Length balance on the same answers (nothing generated again): each pair carries its answers' token counts
    # in the policy's tokenizer, and only pairs within the ratio are kept; the dropped ones are counted.
    from rlmt.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_zoo["llama-instruct"])
    for p in pairs:
        assert p["chosen_tokens"] == len(tokenizer(p["chosen"], add_special_tokens=False)["input_ids"])
        assert p["rejected_tokens"] == len(tokenizer(p["rejected"], add_special_tokens=False)["input_ids"])

    def ratio_of(p):
        return max(p["chosen_tokens"], p["rejected_tokens"]) / min(p["chosen_tokens"], p["rejected_tokens"])

    ratio = min(map(ratio_of, pairs))  # the least lopsided pair's ratio: it stays, every more lopsided one goes
    within = [p["id"] for p in pairs if ratio_of(p) <= ratio]
    balanced = build_rm_pairs(reference, tiny_zoo["llama-instruct"], out,
                              RMPairsConfig(max_new_tokens=8, max_length_ratio=ratio), exclude=[shared])
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == within
    assert balanced["pairs"] == len(within) >= 1 and balanced["dropped_length_ratio"] == len(pairs) - len(within)
    assert (tmp_path / "pairs" / "pairs.policy.jsonl").read_bytes() == before
