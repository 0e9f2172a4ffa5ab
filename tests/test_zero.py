"""Zero-template conversion: the paper's fixed prompt, the chat EOS, longcot_config.json and stop.txt."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlmt.cli import app
from rlmt.models.loading import load_tokenizer
from rlmt.models.zero import convert_to_zero, read_stop_strings
from rlmt.thinking import ZERO_NOTHINK, ZERO_THINK, ThinkingFormat, extract, format_output

THINK_HEADER = ("A conversation between User and Assistant. Following the User's query, the Assistant first "
                "plans a response, and then provides the response. The internal reasoning process is enclosed "
                "within <think> </think> tags and the response is enclosed within <response> </response> tags, "
                "i.e., in the format <think> reasoning process here </think> <response> response here </response>.")
NOTHINK_HEADER = ("A conversation between User and Assistant. The user asks a question, and the assistant provides "
                  "a response. The response is enclosed within <response> </response> tags, i.e., <response> "
                  "response </response>.")


def test_llama_zero_think(tiny_zoo, tmp_path):
    out = convert_to_zero(tiny_zoo["llama-base"], tmp_path / "llama-zero", think=True)
    tok = load_tokenizer(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "  Write a haiku.\n"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == f"<|begin_of_text|>{THINK_HEADER}\n\nUser: <query>Write a haiku.</query>\nAssistant:"
    assert tok.eos_token == "<|eot_id|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|eot_id|>") in gen["eos_token_id"]
    assert ThinkingFormat.load(out) == ZERO_THINK
    assert (out / "stop.txt").read_text() == "</response>\n" and read_stop_strings(out) == ["</response>"]
    assert (out / "model.safetensors").is_symlink()
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    # what the model is asked to write, extracted by the one rule
    turn = format_output("count syllables", "Old pond, a frog jumps.", ZERO_THINK)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Write a haiku."},
                                        {"role": "assistant", "content": turn}], tokenize=False)
    assert rendered == f"<|begin_of_text|>{THINK_HEADER}\n\nUser: <query>Write a haiku.</query>\nAssistant: {turn}"
    completion = rendered[len(prompt):]
    got = extract(completion, ZERO_THINK, strict=True)
    assert (got.thought, got.answer, got.well_formed) == ("count syllables", "Old pond, a frog jumps.", True)


def test_qwen_zero_nothink_multi_turn(tiny_zoo, tmp_path):
    out = convert_to_zero(tiny_zoo["qwen-base"], tmp_path / "qwen-zero", think=False)
    tok = load_tokenizer(out)
    text = tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                    {"role": "user", "content": "c"}], tokenize=False, add_generation_prompt=True)
    # Qwen has no BOS: the template starts with the header itself
    assert text == f"{NOTHINK_HEADER}\n\nUser: <query>a</query>\nAssistant: b\nUser: <query>c</query>\nAssistant:"
    assert tok.eos_token == "<|im_end|>"
    assert ThinkingFormat.load(out) == ZERO_NOTHINK


def test_conversion_errors(tiny_zoo, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="no chat EOS known for model_type 'gpt2'"):
        convert_to_zero(odd, tmp_path / "out", think=True)
    with pytest.raises(ValueError, match="has no token '<|nope|>'"):
        convert_to_zero(tiny_zoo["llama-base"], tmp_path / "bad-eos", think=True, eos_token="<|nope|>")
    assert not (tmp_path / "bad-eos").exists()


def test_cli_zero(tiny_zoo, tmp_path, mlflow_uri):
    runner = CliRunner()
    out = tmp_path / "cli-zero"
    res = runner.invoke(app, ["models", "zero", "--base", str(tiny_zoo["llama-base"]), "--out", str(out), "--nothink"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(str(out))  # stdout: the path; rlmt's log lines go to stderr
    assert ThinkingFormat.load(out) == ZERO_NOTHINK and read_stop_strings(out) == ["</response>"]
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`rlmt.stage` = 'zero'")
    assert len(runs) == 1 and runs.iloc[0]["params.think"] == "False"

    missing = runner.invoke(app, ["models", "zero", "--base", str(tmp_path / "nope"), "--out", str(out), "--think"])
    assert missing.exit_code == 2 and "model directory not found" in missing.output
    no_flag = runner.invoke(app, ["models", "zero", "--base", str(tiny_zoo["llama-base"]), "--out", str(out)])
    assert no_flag.exit_code == 2 and "--think" in no_flag.output
