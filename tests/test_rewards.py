"""The answer-only reward: what the reward model sees, and that batching changes no score."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlmt.models.loading import load_tokenizer
from rlmt.rewards import AnswerRewardScorer, length_buckets
from rlmt.thinking import FORMATS, NULL_ANSWER, WARM_THINK, ZERO_THINK, format_output

PROMPT = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "Name a colour."},
          {"role": "assistant", "content": "Red."},
          {"role": "user", "content": "Another one, please."}]
WORDS = "the a plan answer colour blue green write list code step first then why how".split()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scorer(tiny_zoo):
    return AnswerRewardScorer(tiny_zoo["reward"], WARM_THINK, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def rm_tok(tiny_zoo):
    return load_tokenizer(tiny_zoo["reward"])


def _mixed_batch(n: int, seed: int = 0):
    rng = random.Random(seed)
    prompts, outputs = [], []
    for _ in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))
        a = " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))
        t = " ".join(rng.choices(WORDS, k=rng.randint(0, 30)))
        prompts.append([{"role": "user", "content": q}])
        outputs.append(format_output(t, a, WARM_THINK) if rng.random() > 0.2 else f"<think>\n{t}")
    return prompts, outputs


thought_text = st.text(alphabet=st.sampled_from(list("abcxyz <>/\n.")), min_size=0, max_size=40).filter(
    lambda s: not any(t in s for t in ("<think>", "</think>", "<response>", "</response>")))


@pytest.fixture(scope="module")
def scorers(tiny_zoo):
    return {(name, strict): AnswerRewardScorer(tiny_zoo["reward"], FORMATS[name], strict=strict, device="cpu")
            for name in ("warm-think", "zero-think") for strict in (False, True)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(thought=thought_text, answer=thought_text.filter(lambda s: s.strip()),
       name=st.sampled_from(["warm-think", "zero-think"]), strict=st.booleans())
def test_thought_never_reaches_the_reward_model(scorers, rm_tok, thought, answer, name, strict):
    fmt = FORMATS[name]
    view = scorers[(name, strict)]
    secret = f"SECRETTHOUGHT {thought}"
    got = view.reward_input(PROMPT, format_output(secret, answer, fmt))
    expected = rm_tok.apply_chat_template([*PROMPT, {"role": "assistant", "content": answer.strip()}], tokenize=False)
    assert got == expected
    assert "SECRETTHOUGHT" not in got


def test_reward_input_uses_the_reward_models_own_template(tiny_zoo, scorer, rm_tok):
    policy_tok = load_tokenizer(tiny_zoo["llama-instruct"])
    assert policy_tok.chat_template != rm_tok.chat_template
    output = format_output("I should say blue.", "Blue.", WARM_THINK)
    got = scorer.reward_input(PROMPT, output)
    assert got == ("<s>[SYS] You are terse. [/SYS][INST] Name a colour. [/INST] Red.</s>"
                   "[INST] Another one, please. [/INST] Blue.</s>")
    assert got == rm_tok.apply_chat_template([*PROMPT, {"role": "assistant", "content": "Blue."}], tokenize=False)
    assert "<|start_header_id|>" not in got and "<think>" not in got


def test_batched_scores_equal_one_at_a_time(tiny_zoo, scorer):
    prompts, outputs = _mixed_batch(32)
    batched = scorer.score(prompts, outputs)
    one_by_one = AnswerRewardScorer(tiny_zoo["reward"], WARM_THINK, max_tokens_per_batch=1, device="cpu",
                                    dtype="float32").score(prompts, outputs)
    assert len(length_buckets([len(x) for x in batched.reward_inputs], 1)) == 32
    assert max(abs(a - b) for a, b in zip(batched.scores, one_by_one.scores)) < 1e-4
    assert len(set(round(s, 6) for s in batched.scores)) > 10  # the scores depend on the answer
    # order is restored: scoring a permutation permutes the scores
    perm = list(range(32))
    random.Random(1).shuffle(perm)
    again = scorer.score([prompts[i] for i in perm], [outputs[i] for i in perm]).scores
    assert max(abs(again[k] - batched.scores[i]) for k, i in enumerate(perm)) < 1e-4


def _reward_model_without_pad_id(source: Path, out: Path, *, tokenizer_pad: bool) -> Path:
    """A copy of a reward model whose config names no pad id (and, optionally, whose tokenizer has no pad token)."""
    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    config["pad_token_id"] = None
    (out / "config.json").write_text(json.dumps(config))
    if not tokenizer_pad:
        tok_config = json.loads((out / "tokenizer_config.json").read_text())
        assert tok_config.pop("pad_token", None) is not None
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return out


@pytest.mark.parametrize("tokenizer_pad", [True, False], ids=["tokenizer-pad", "no-pad-token-at-all"])
def test_batching_without_a_configured_pad_id_pools_at_the_last_token(tiny_zoo, tmp_path, tokenizer_pad):
    """Padded batches of a reward model without a pad id score as one unpadded input each: the
    padding id must be one that no row holds (with no pad token the loader's fallback, EOS, is in
    every row), or the model would pool at the wrong position."""
    model_dir = _reward_model_without_pad_id(tiny_zoo["reward"], tmp_path / "rm", tokenizer_pad=tokenizer_pad)
    prompts, outputs = _mixed_batch(12, seed=3)
    ref = AnswerRewardScorer(tiny_zoo["reward"], WARM_THINK, max_tokens_per_batch=1, device="cpu", dtype="float32")
    nopad = AnswerRewardScorer(model_dir, WARM_THINK, device="cpu", dtype="float32")
    assert nopad.model.config.pad_token_id is None
    assert (nopad.tokenizer.pad_token == "<pad>") == tokenizer_pad
    if not tokenizer_pad:
        assert nopad.tokenizer.pad_token_id == nopad.tokenizer.eos_token_id
    batch = nopad.score(prompts, outputs)
    assert any(len(b) > 1 for b in length_buckets(batch.input_lengths, nopad.max_tokens_per_batch))  # it padded
    a = ref.score(prompts, outputs).scores
    assert max(abs(x - y) for x, y in zip(a, batch.scores)) < 1e-4
    assert nopad.model.config.pad_token_id is None  # the temporary pad id does not stay on the model


def test_length_buckets_respect_the_token_budget():
    lengths = [5, 100, 7, 60, 61, 3, 200, 8]
    buckets = length_buckets(lengths, 128)
    assert sorted(i for b in buckets for i in b) == list(range(8))
    for b in buckets:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or width * len(b) <= 128
        assert min(lengths[i] for i in b) >= 0.8 * width  # at most 20% padding in any row
    assert buckets[0] == [6]  # longest first; an over-budget row goes alone
    assert buckets == [[6], [1], [4, 3], [7, 2], [0], [5]]


def test_equal_inputs_get_equal_rewards_wherever_they_sit(scorer):
    """By construction, not by luck: one input at several rows of padded batches (where a forward
    may differ in the last bits from row to row: it did here for the long neighbour) gets one float."""
    prompt = [{"role": "user", "content": "Name a colour please."}]
    answer = format_output("t", "I think so.", WARM_THINK)
    for neighbours in (["ok"], ["A long and thoughtful reply with details. " * 3], ["ok", "no", "maybe so"]):
        outputs = [answer, *[format_output("x", n, WARM_THINK) for n in neighbours], answer, answer]
        scores = scorer.score([prompt] * len(outputs), outputs).scores
        same = [scores[i] for i, o in enumerate(outputs) if o == answer]
        assert len(same) == 3 and len(set(same)) == 1, (neighbours, same)
        assert len(set(scores)) == 1 + len(neighbours)


def test_same_answer_same_score_whatever_the_thought(scorer):
    outs = [format_output("short", "Blue it is.", WARM_THINK),
            format_output("a much longer and entirely different plan " * 5, "Blue it is.", WARM_THINK),
            format_output("short", "Green, surely.", WARM_THINK)]
    s = scorer.score([PROMPT] * 3, outs).scores
    assert s[0] == pytest.approx(s[1], abs=1e-6)
    assert abs(s[0] - s[2]) > 1e-6


def test_malformed_fraction_and_strict_null(tiny_zoo):
    strict = AnswerRewardScorer(tiny_zoo["reward"], ZERO_THINK, strict=True, device="cpu", dtype="float32")
    outputs = ["<think> t </think> <response> fine </response>", "<think> truncated",
               "<think> t </think> <response> cut off", "<response> ok </response>"]
    batch = strict.score([PROMPT] * 4, outputs)
    assert batch.malformed_fraction == 0.5
    assert [e.answer for e in batch.extractions] == ["fine", NULL_ANSWER, NULL_ANSWER, "ok"]
    assert batch.reward_inputs[1].endswith(f"[/INST] {NULL_ANSWER}</s>")
    assert batch.scores[1] == pytest.approx(batch.scores[2], abs=1e-6)


def test_long_inputs_lose_the_prompts_left_never_the_answer(tiny_zoo, rm_tok):
    short = AnswerRewardScorer(tiny_zoo["reward"], WARM_THINK, max_length=48, device="cpu", dtype="float32")
    answer = "Blue is my answer."
    prompt = [{"role": "user", "content": "first question " * 30},
              {"role": "assistant", "content": "first reply " * 10},
              {"role": "user", "content": "START " + "word " * 60 + "END of the question"}]
    batch = short.score([prompt], [format_output("t", answer, WARM_THINK)])
    text = batch.reward_inputs[0]
    ids = rm_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 48 and batch.n_prompt_truncated == 1 and batch.n_answer_truncated == 0
    assert text.endswith(f"END of the question [/INST] {answer}</s>")
    assert "first question" not in text and "START" not in text and text.startswith("<s>[INST]")
    assert batch.scores[0] == pytest.approx(short.score_token_ids([ids])[0], abs=1e-5)
    # an answer longer than the whole budget keeps its start and is counted
    huge = short.score([prompt], [format_output("t", "Blue " * 80, WARM_THINK)])
    assert huge.n_answer_truncated == 1 and huge.reward_inputs[0].startswith("<s>[INST]  [/INST] Blue Blue")


def test_system_turns_are_folded_when_the_reward_template_rejects_them(tiny_zoo):
    s = AnswerRewardScorer(tiny_zoo["reward"], WARM_THINK, device="cpu", dtype="float32")
    s.tokenizer.chat_template = (
        "{%- for m in messages %}{%- if m['role'] == 'system' %}{{ raise_exception('no system role') }}{%- endif %}"
        "{{- m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor %}")
    got = s.reward_input(PROMPT[:2], "<think>x</think>Blue.")
    assert got == "user: You are terse.\n\nName a colour.\nassistant: Blue.\n"


def test_trl_reward_function(scorer):
    fn = scorer.as_trl_reward_func()
    assert fn.__name__ == "answer_reward"
    outputs = [format_output("p", "Blue.", WARM_THINK), "<think>\nunfinished"]
    conversational = fn(prompts=[PROMPT, PROMPT],
                        completions=[[{"role": "assistant", "content": o}] for o in outputs],
                        completion_ids=[[1], [2]], trainer_state=None)
    assert conversational == scorer.score([PROMPT, PROMPT], outputs).scores
    assert fn.last_batch.malformed_fraction == 0.5
    plain = fn(["Another one, please."], [outputs[0]])
    assert plain == scorer.score([[{"role": "user", "content": "Another one, please."}]], [outputs[0]]).scores


def test_bad_input_is_named(scorer, tiny_zoo):
    with pytest.raises(ValueError, match="2 prompts but 1 outputs"):
        scorer.score([PROMPT, PROMPT], ["x"])
    with pytest.raises(ValueError, match="needs a user turn"):
        scorer.reward_input([{"role": "system", "content": "s"}], "x")
    with pytest.raises(ValueError, match="not a {'role', 'content'} message"):
        scorer.reward_input([{"text": "hi"}], "x")
    with pytest.raises(ValueError, match="has no chat template"):
        AnswerRewardScorer(tiny_zoo["llama-base"], WARM_THINK)


def test_scorer_from_config_spec(tiny_zoo):
    from rlmt.config import RewardModelSpec

    spec = RewardModelSpec(source="tiny:reward", max_length=40, max_tokens_per_batch=64)
    s = AnswerRewardScorer.from_spec(tiny_zoo["reward"], WARM_THINK, spec, strict=True, device="cpu")
    assert (s.max_length, s.max_tokens_per_batch, s.strict) == (40, 64, True)
    batch = s.score([PROMPT], ["<think>\nx\n</think>\n\n" + "Blue " * 5])
    assert batch.input_lengths[0] <= 40 and batch.n_prompt_truncated == 1


GATED_RM_CODE = '''
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import LlamaForSequenceClassification
from transformers.utils import ModelOutput


@dataclass
class GatedRewardOutput(ModelOutput):
    logits: Optional[torch.Tensor] = None  # one reward per objective
    score: Optional[torch.Tensor] = None   # their mix: the preference score


class GatedRewardModel(LlamaForSequenceClassification):
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        mix = torch.tensor([0.5, -1.0, 2.0], dtype=logits.dtype, device=logits.device)
        return GatedRewardOutput(logits=logits, score=logits @ mix)
'''


def _gated_reward_model(tiny_reward, tmp_path):
    """A reward model shaped like ArmoRM: a Llama config whose auto_map points
    AutoModelForSequenceClassification at modelling code saved beside the weights, three objective
    logits and a scalar ``score``."""
    import importlib
    import json
    import sys

    import torch

    src = tmp_path / "src"
    src.mkdir()
    (src / "rlmt_test_gated_rm.py").write_text(GATED_RM_CODE)
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module("rlmt_test_gated_rm")
    finally:
        sys.path.remove(str(src))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_reward, num_labels=3)
    module.GatedRewardModel.register_for_auto_class("AutoModelForSequenceClassification")
    torch.manual_seed(0)
    out = tmp_path / "gated-rm"
    module.GatedRewardModel(config).save_pretrained(out, safe_serialization=True)
    load_tokenizer(tiny_reward).save_pretrained(out)
    assert (out / "rlmt_test_gated_rm.py").exists() and "auto_map" in json.loads((out / "config.json").read_text())
    return out


def test_a_reward_model_with_its_own_code_scores_with_its_score_output(tiny_zoo, tmp_path):
    import torch

    model_dir = _gated_reward_model(tiny_zoo["reward"], tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):  # custom code runs only when config names it
        AnswerRewardScorer(model_dir, WARM_THINK, device="cpu", dtype="float32")
    common = dict(device="cpu", dtype="float32", trust_remote_code=True)
    scorer = AnswerRewardScorer(model_dir, WARM_THINK, **common)
    prompts, outputs = _mixed_batch(12, seed=5)
    batch = scorer.score(prompts, outputs)
    one_by_one = AnswerRewardScorer(model_dir, WARM_THINK, max_tokens_per_batch=1, **common).score(prompts, outputs)
    assert max(abs(a - b) for a, b in zip(batch.scores, one_by_one.scores)) < 1e-4
    with torch.no_grad():
        direct = scorer.model(torch.tensor([scorer._tokenize(batch.reward_inputs[0])]))
    assert direct.logits.shape[-1] == 3  # not one label: the scalar is `score`
    assert abs(float(direct.score[0]) - batch.scores[0]) < 1e-4
