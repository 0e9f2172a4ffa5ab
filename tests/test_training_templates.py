"""The shipped SFT training templates against the paper's models' real chat templates.

tests/fixtures/templates/ holds the real ``chat_template`` strings of Llama-3.1-8B-Instruct and
Qwen2.5-7B-Instruct (sources in SOURCES.md). A training template must render exactly their text
and mask exactly the assistant turns (content + end-of-turn token). Token-level checks use the
tiny zoo's tokenizers, which carry the families' special tokens, wearing the real templates.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmt.resources import chat_templates
from rlmt.train.runtime import TrainingSetupError
from rlmt.train.sft import _check_template

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
REAL = {"llama3_1_training": FIXTURES / "meta-llama--Llama-3.1-8B-Instruct.jinja",
        "qwen2_5_training": FIXTURES / "Qwen--Qwen2.5-7B-Instruct.jinja",
        "smollm2_training": FIXTURES / "HuggingFaceTB--SmolLM2-135M-Instruct.jinja"}
ARCH = {"llama3_1_training": "llama", "qwen2_5_training": "qwen", "smollm2_training": "qwen"}  # SmolLM2: ChatML

CHATS = [
    [{"role": "user", "content": "Plan a picnic."},
     {"role": "assistant", "content": "<think>\nFood, place, time.\n</think>\n\nBring sandwiches to the park at noon."}],
    [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "  Capital of France?  "},
     {"role": "assistant", "content": " Paris. "}, {"role": "user", "content": "And of Italy?"},
     {"role": "assistant", "content": "Rome."}],
]


@pytest.fixture(scope="module")
def tokenizers():
    from rlmt.models.tiny import build_tokenizer

    return {"llama": build_tokenizer("llama", 1024, chat=True), "qwen": build_tokenizer("qwen", 1024, chat=True)}


def test_fixtures_are_the_real_templates():
    llama, qwen = REAL["llama3_1_training"].read_text(), REAL["qwen2_5_training"].read_text()
    assert 'set date_string = "26 Jul 2024"' in llama and "Cutting Knowledge Date: December 2023" in llama
    assert "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." in qwen
    from trl.chat_template_utils import has_generation_markers

    assert not has_generation_markers(llama) and not has_generation_markers(qwen)  # why training templates exist


@pytest.mark.parametrize("name", sorted(chat_templates.SHIPPED))
def test_training_template_renders_the_real_text_and_masks_assistant_turns(name):
    tpl = chat_templates.SHIPPED[name]
    problems = chat_templates.template_problems(REAL[name].read_text(), chat_templates.resolve(f"package:{name}").read_text(),
                                                end_of_turn=tpl.end_of_turn, bos_token=tpl.bos_token)
    assert problems == []


def test_a_training_template_of_the_other_family_is_caught():
    problems = chat_templates.template_problems(REAL["qwen2_5_training"].read_text(),
                                                chat_templates.resolve("package:llama3_1_training").read_text(),
                                                end_of_turn="<|im_end|>")
    assert any("renders different text" in p for p in problems)


@pytest.mark.parametrize("name", sorted(chat_templates.SHIPPED))
def test_token_mask_is_exactly_the_assistant_turns(name, tokenizers):
    tok = tokenizers[ARCH[name]]
    tok.chat_template = REAL[name].read_text()
    training = chat_templates.resolve(f"package:{name}").read_text()
    eot = chat_templates.SHIPPED[name].end_of_turn
    for chat in CHATS:
        real_text = tok.apply_chat_template(chat, tokenize=False)
        out = tok.apply_chat_template(chat, chat_template=training, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        assert tok.decode(ids) == real_text  # same text, token for token
        # masked tokens form one run per assistant turn: its content (Llama trims it) then the end-of-turn token
        runs, current = [], []
        for token, m in zip(ids, mask):
            if m:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        contents = [m["content"] for m in chat if m["role"] == "assistant"]
        if ARCH[name] == "llama":
            contents = [c.strip() for c in contents]
        assert [tok.decode(r) for r in runs] == [c + eot for c in contents]


def test_llama31_real_template_fails_without_a_training_template_and_passes_with_the_shipped_one(tokenizers):
    tok = tokenizers["llama"]
    tok.chat_template = REAL["llama3_1_training"].read_text()
    with pytest.raises(TrainingSetupError, match="chat_template_path"):
        _check_template(tok, None)  # TRL 1.16 has no training version of Llama-3.1's template
    path = _check_template(tok, "package:llama3_1_training")
    assert path is not None and Path(path).read_text() == chat_templates.resolve("package:llama3_1_training").read_text()


def test_check_template_rejects_the_wrong_family_and_unknown_names(tokenizers):
    tok = tokenizers["qwen"]
    tok.chat_template = REAL["qwen2_5_training"].read_text()
    with pytest.raises(TrainingSetupError, match="does not fit"):
        _check_template(tok, "package:llama3_1_training")
    with pytest.raises(TrainingSetupError, match="no such shipped template"):
        _check_template(tok, "package:mistral_training")
    assert _check_template(tok, "package:qwen2_5_training").endswith("qwen2_5_training.jinja")


def test_tools_are_refused_not_rendered_wrongly():
    from transformers.utils.chat_template_utils import render_jinja_template

    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    for name in chat_templates.SHIPPED:
        with pytest.raises(Exception, match="no tools"):
            render_jinja_template([CHATS[0]], tools=[tool], chat_template=chat_templates.resolve(f"package:{name}").read_text(),
                                  bos_token="", eos_token="")


@pytest.mark.parametrize("name,tiny", [("llama3_1_training", "llama-instruct"), ("qwen2_5_training", "qwen-instruct"),
                                       ("smollm2_training", "qwen-instruct")])
def test_trl_sft_trainer_masks_exactly_the_assistant_turns_of_the_real_template(name, tiny, tmp_path):
    """TRL's own SFTTrainer, set up as a job sets it up (template check, then the args builder), on a tiny model
    wearing the family's real template: its tokenized rows render the real text and train on the assistant turns."""
    from datasets import Dataset
    from trl import SFTTrainer

    from rlmt.config import SFTConfig
    from rlmt.models.loading import load_causal_lm, load_tokenizer
    from rlmt.models.tiny import build_tiny
    from rlmt.train.sft import trl_sft_args

    model_dir = build_tiny(tiny, tmp_path / "model")
    tok = load_tokenizer(model_dir)
    tok.chat_template = REAL[name].read_text()
    real_texts = [tok.apply_chat_template(chat, tokenize=False) for chat in CHATS]
    settings = SFTConfig(chat_template_path=f"package:{name}", per_device_train_batch_size=1, global_batch_size=1,
                         max_length=1024, bf16=False)
    template_file = _check_template(tok, settings.chat_template_path)
    args = trl_sft_args(settings, tmp_path / "work", chat_template_path=template_file, world=1)
    trainer = SFTTrainer(model=load_causal_lm(model_dir, device="cpu", dtype="float32"), args=args,
                         train_dataset=Dataset.from_list([{"messages": c} for c in CHATS]), processing_class=tok)
    eot = chat_templates.SHIPPED[name].end_of_turn
    for i, (chat, real_text) in enumerate(zip(CHATS, real_texts)):
        batch = trainer.data_collator([trainer.train_dataset[i]])  # what the loss sees: labels -100 off the mask
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert tok.decode(ids) == real_text
        masked = tok.decode([t for t, label in zip(ids, labels) if label != -100])
        contents = [m["content"] for m in chat if m["role"] == "assistant"]
        if ARCH[name] == "llama":
            contents = [c.strip() for c in contents]
        assert masked == "".join(c + eot for c in contents)
