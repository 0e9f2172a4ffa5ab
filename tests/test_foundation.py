"""Foundation: the tiny zoo loads through the Auto classes, configs are validated, MLflow records concurrent jobs."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlmt.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


# ----------------------------------------------------------------------------- tiny zoo


@pytest.mark.parametrize("name", ["llama-base", "llama-instruct", "qwen-base", "qwen-instruct"])
def test_tiny_causal_lm_loads_and_generates(tiny_zoo, name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tiny_zoo[name]
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    config = AutoConfig.from_pretrained(path)
    assert config.architectures[0] == ("LlamaForCausalLM" if name.startswith("llama") else "Qwen2ForCausalLM")
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 5_000_000
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(["Plan a picnic.", "Explain tides to a child, please."], return_tensors="pt", padding=True)
    assert tok.padding_side == "left"
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    width = batch.input_ids.shape[1]
    assert torch.equal(out[:, :width], batch.input_ids) and 1 <= out.shape[1] - width <= 6
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for row in range(2):  # greedy decoding, checked with one unpadded forward of our own per new token
        ids = batch.input_ids[row][batch.attention_mask[row].bool()]
        new = out[row, width:].tolist()
        ended = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
        assert ended == 6 or ended < 6 and new[ended - 1] in eos  # 6 tokens unless an EOS came first
        assert all(t == tok.pad_token_id for t in new[ended:])  # then only padding
        for t in new[:ended]:
            with torch.no_grad():
                logits = model(ids[None]).logits[0, -1]
            assert logits[t] >= logits.max() - 1e-4, (row, t, int(logits.argmax()))  # an argmax (round-off aside)
            ids = torch.cat([ids, torch.tensor([t])])
    assert (tok.chat_template is not None) == name.endswith("instruct")


def test_tiny_reward_model_scores_with_its_own_template(tiny_zoo):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_zoo["reward"]
    rm = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
    assert rm.config.num_labels == 1
    rm_tok = AutoTokenizer.from_pretrained(path)
    policy_tok = AutoTokenizer.from_pretrained(tiny_zoo["llama-instruct"])
    chat = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]
    rm_text = rm_tok.apply_chat_template(chat, tokenize=False)
    assert rm_text == "<s>[INST] Name a fruit. [/INST] A pear.</s>"
    assert rm_text != policy_tok.apply_chat_template(chat, tokenize=False)
    assert rm_tok.get_vocab() != policy_tok.get_vocab()
    with torch.no_grad():
        score = rm(**rm_tok(rm_text, return_tensors="pt", add_special_tokens=False)).logits
    assert score.shape == (1, 1) and torch.isfinite(score).all()


def test_chat_templates_render_multi_turn_in_family_structure(tiny_zoo):
    from transformers import AutoTokenizer

    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    llama = AutoTokenizer.from_pretrained(tiny_zoo["llama-instruct"]).apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)
    assert llama == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    qwen = AutoTokenizer.from_pretrained(tiny_zoo["qwen-instruct"]).apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)
    assert qwen == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n")


def test_zoo_is_deterministic(tmp_path, tiny_zoo):
    from rlmt.models.tiny import build_tiny

    again = build_tiny("qwen-base", tmp_path / "qwen-base")
    for f in ("model.safetensors", "tokenizer.json"):
        a = hashlib.sha256((tiny_zoo["qwen-base"] / f).read_bytes()).hexdigest()
        b = hashlib.sha256((again / f).read_bytes()).hexdigest()
        assert a == b, f


def test_prepare_refuses_pickled_weights(tmp_path, tiny_zoo):
    import shutil

    from rlmt.models.loading import UnsafeWeightsError
    from rlmt.models.prepare import prepare_model

    src = tmp_path / "pickled"
    shutil.copytree(tiny_zoo["llama-base"], src)
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        prepare_model(str(src), tmp_path / "out")


def test_prepare_local_model_links_weights_and_copies_template(tmp_path, tiny_zoo):
    from transformers import AutoTokenizer

    from rlmt.models.prepare import prepare_model
    from rlmt.thinking import WARM_THINK, ThinkingFormat

    out = prepare_model(str(tiny_zoo["llama-base"]), tmp_path / "m", longcot=WARM_THINK,
                        chat_template_from=tiny_zoo["llama-instruct"])
    assert (out / "model.safetensors").is_symlink()
    assert ThinkingFormat.load(out) == WARM_THINK
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|eot_id|>" and "<|start_header_id|>" in tok.chat_template


# ----------------------------------------------------------------------------- config


def _broken(mutate) -> dict:
    raw = copy.deepcopy(DEFAULT)
    mutate(raw)
    return raw


BAD_CONFIGS = {
    "unknown algorithm": (lambda c: c["grid"][0].update(algo=["grpo", "reinforce"]), "grid.0.algo.1", "'grpo', 'ppo' or 'dpo'"),
    "undefined model": (lambda c: c["grid"][0].update(base=["llama-base", "mistral-base"]), "grid[0].base", "allowed: ['llama-base'"),
    "undefined reward model": (lambda c: c["grid"][0].update(rm=["skywork"]), "grid[0].rm", "allowed: ['tiny-rm', 'tiny-rm-odin']"),
    "wrong type": (lambda c: c["algorithms"]["grpo"].update(learning_rate="fast"), "algorithms.grpo.learning_rate", "valid number"),
    "unknown key": (lambda c: c["algorithms"]["grpo"].update(num_generation=8), "algorithms.grpo.num_generation", "unknown key"),
    "unknown benchmark": (lambda c: c["evaluation"]["benchmarks"].update({"mmlu": {}}), "evaluation.benchmarks", "allowed:"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_config_is_rejected_naming_the_key(kind):
    mutate, key, allowed = BAD_CONFIGS[kind]
    with pytest.raises(ConfigError) as err:
        parse_config(_broken(mutate))
    assert key in str(err.value) and allowed in str(err.value)


def test_bad_config_fails_before_any_job(tmp_path):
    raw = _broken(BAD_CONFIGS["undefined model"][0])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", f"--configfile={bad}", "all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "grid[0].base: 'mistral-base' is not defined" in proc.stdout + proc.stderr
    cli = subprocess.run([sys.executable, "-m", "rlmt.cli", "config", "validate", "-c", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "mistral-base" in cli.stderr


def test_schema_file_matches_the_pydantic_models():
    from rlmt.config import json_schema

    on_disk = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    assert on_disk == json_schema(), "regenerate with: rlmt config schema --out config/schema.yaml"


def test_both_configs_validate_against_schema_and_models():
    import jsonschema

    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    for name in ("config.yaml", "paper.yaml"):
        raw = yaml.safe_load((ROOT / "config" / name).read_text())
        jsonschema.validate(raw, schema)
        cfg = load_config(ROOT / "config" / name)
        # the grid the models expand is the one in the file: every axis product once
        default_sft = next(iter(raw["sft_data"]), None)
        expected = {(a, b, st, t, rm, mix, (block.get("sft_data") or default_sft) if st == "warm-start" else None)
                    for block in raw["grid"] for a in block["algo"] for b in block["base"] for st in block["start"]
                    for t in block["think"] for rm in block["rm"] for mix in block["mixture"]}
        assert {(c.algo, c.base, c.start, c.think, c.rm, c.mixture, c.sft_data) for c in cfg.cells()} == expected
        assert len(cfg.cells()) == len(expected)
        # and both the schema and the models reject what the file must not hold
        for path, value, message in ((("surprise",), 1, "'surprise' was unexpected"),
                                     (("grid", 0, "algo"), ["sac"], "'sac' is not one of"),
                                     (("seed",), "zero", "'zero' is not of type 'integer'")):
            bad = copy.deepcopy(raw)
            target = bad
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            with pytest.raises(jsonschema.ValidationError, match=message):
                jsonschema.validate(bad, schema)
            with pytest.raises(ConfigError):
                parse_config(bad)


def test_paper_grid_has_the_ablation_axes():
    cfg = load_config(ROOT / "config/paper.yaml")
    cells = cfg.cells()
    assert len(cells) >= 40
    assert {c.algo for c in cells} == {"grpo", "ppo", "dpo"}
    # the paper's three reward models, and the rubric judge and its mix with skywork-v1 (an extension, issue 33)
    assert {c.rm for c in cells} == {"skywork-v1", "skywork-v2", "armorm", "rubric-gpt41mini", "skywork-v1-rubric"}
    assert {c.mixture for c in cells} == {"wildchat-if", "ultrafeedback", "tulu3-random"}
    instruct_think = cfg.cell("grpo__llama-instruct__warm-start__think__skywork-v1__wildchat-if")
    grpo = cfg.settings("grpo", instruct_think)
    assert (grpo.learning_rate, grpo.strict, grpo.prompts_per_step, grpo.rollout.temperature) == (3e-7, True, 128, 0.8)
    zero_llama = cfg.settings("grpo", cfg.cell("grpo__llama-base__zero__think__skywork-v1__wildchat-if"))
    assert (zero_llama.rollout.max_prompt_length, zero_llama.num_train_epochs, zero_llama.strict) == (896, 4, False)


def test_cli_help_lists_the_stages():
    import os
    import re

    def commands(args: list[str]) -> dict[str, str]:
        """name -> help text of the rows of the help's Commands box (not a word found anywhere)."""
        proc = subprocess.run([sys.executable, "-m", "rlmt.cli", *args, "--help"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"})
        assert proc.returncode == 0, proc.stderr
        box = proc.stdout.split("Commands")[1]
        return {m.group(1): m.group(2).strip() for m in re.finditer(r"^│ ([a-z][\w-]*)\s{2,}(\S.*?)\s*│$", box, re.M)}

    groups = commands([])
    for group in ("config", "models", "data", "train", "eval", "report", "launch"):
        assert groups.get(group), (group, groups)
    assert set(commands(["train"])) >= {"sft", "grpo", "dpo", "ppo"}


# ----------------------------------------------------------------------------- tracking


def test_eight_concurrent_jobs_make_eight_runs(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, mlflow\n"
        "from rlmt.tracking import stage_run\n"
        "with stage_run('train', cell='cell-a', rule='train', params={'i': sys.argv[1], 'api_key': 'sk-hidden'}):\n"
        "    for step in range(10):\n"
        "        mlflow.log_metrics({'loss': float(sys.argv[1]) + step, 'reward': -step}, step=step)\n"
        "    mlflow.log_metric('final', float(sys.argv[1]))\n")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rlmt")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rlmt.is_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("rlmt.is_parent") != "true"]
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.metrics["final"] for r in children) == [float(i) for i in range(8)]
    for r in children:  # every metric of every step of every job landed
        i = float(r.data.params["i"])
        loss = client.get_metric_history(r.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in loss) == [(s, i + s) for s in range(10)]
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "reward")) == list(range(10))
    assert all("api_key" not in r.data.params for r in children)


def test_a_killed_job_is_marked_killed_when_the_next_job_starts(tmp_path):
    """kill -9 leaves a run RUNNING; the next job on the host ends it as KILLED and says why."""
    import os
    import signal

    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time\n"
        "from rlmt.tracking import stage_run\n"
        "with stage_run('train', cell='cell-k', rule='train') as run:\n"
        "    print(run.info.run_id, flush=True)\n"
        "    if sys.argv[1] == 'hang':\n"
        "        time.sleep(600)\n")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    hung = subprocess.Popen([sys.executable, str(script), "hang"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    killed_id = hung.stdout.readline().strip()
    os.kill(hung.pid, signal.SIGKILL)
    hung.wait(timeout=60)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(killed_id).info.status == "RUNNING"
    done = subprocess.run([sys.executable, str(script), "finish"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    killed = client.get_run(killed_id)
    assert killed.info.status == "KILLED" and "was gone" in killed.data.tags["rlmt.ended"]
    assert killed.data.tags["rlmt.pid"] == str(hung.pid)
    assert client.get_run(done.stdout.strip()).info.status == "FINISHED"
