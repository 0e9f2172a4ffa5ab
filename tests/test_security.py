"""Loading is safe: safetensors only in every loader, custom model code only when asked for.

Two traps make "nothing was read / nothing ran" observable instead of assumed:

- a pickled ``pytorch_model.bin`` whose unpickling creates a sentinel directory (``os.mkdir``
  via ``__reduce__``): any ``pickle.load`` of it — a plain one, or ``torch.load`` without
  ``weights_only`` — leaves the sentinel behind;
- a model dir whose ``auto_map`` points every Auto class at ``sentinel_code.py`` beside the
  weights; importing that file (which is what running custom code means) writes a sentinel file.

Each trap is armed by a positive control (unpickling it by hand, loading with
``trust_remote_code=True``) so that a sentinel that never appears means something.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import polars as pl
import pytest

from rlmt.models.loading import UnsafeWeightsError, load_causal_lm, load_reward_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the pickle trap


class _MkdirOnUnpickle:
    """Unpickling this runs ``os.mkdir(path)``: the trace a pickle load leaves."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _copy_model(src: Path, dst: Path, *, weights: bool) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and (weights or f.suffix != ".safetensors"):
            shutil.copy2(f, dst / f.name)
    return dst


def _plant_pickle(model_dir: Path, sentinel: Path, name: str = "pytorch_model.bin") -> Path:
    (model_dir / name).write_bytes(pickle.dumps(_MkdirOnUnpickle(sentinel)))
    return model_dir / name


def test_the_pickle_trap_is_live(tmp_path):
    """Positive control: reading the planted file the way a pickle loader would leaves the sentinel."""
    sentinel = tmp_path / "unpickled"
    planted = _plant_pickle(tmp_path, sentinel)
    pickle.loads(planted.read_bytes())
    assert sentinel.is_dir()


def _prompts(path: Path) -> Path:
    rows = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()][:4]
    pl.DataFrame({"id": [r["id"] for r in rows], "messages": [r["messages"] for r in rows],
                  "source": ["demo"] * len(rows), "n_tokens": [0] * len(rows)}).write_parquet(path)
    return path


def _loaders(zoo: dict[str, Path], tmp_path: Path):
    """(name, kind, call(model_dir)) for every place that loads weights; kind picks the model the dir copies."""
    from rlmt.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig
    from rlmt.generation.backends import make_generator
    from rlmt.generation.vllm_backend import VLLMGenerator
    from rlmt.judges.cache import JudgeCache
    from rlmt.judges.client import LocalJudge
    from rlmt.models.prepare import prepare_model
    from rlmt.models.zero import convert_to_zero
    from rlmt.rewards import AnswerRewardScorer, RuleReward
    from rlmt.thinking import WARM_THINK, ThinkingFormat
    from rlmt.train.actor_critic import load_critic
    from rlmt.train.dpo import train_dpo
    from rlmt.train.grpo import train_grpo
    from rlmt.train.ppo import train_ppo
    from rlmt.train.sft import train_sft

    train = _prompts(tmp_path / "prompts.parquet")
    sft_rows = tmp_path / "sft.jsonl"
    sft_rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]}) + "\n")
    out = tmp_path / "out"

    def rule_reward(policy_dir):  # a constant rule reward with the policy's own format
        return RuleReward(ThinkingFormat.load(policy_dir), lambda item: 0.0)

    return [
        ("load_causal_lm", "policy", lambda d: load_causal_lm(d, device="cpu")),
        ("load_reward_model", "reward", lambda d: load_reward_model(d, device="cpu")),
        ("AnswerRewardScorer", "reward", lambda d: AnswerRewardScorer(d, WARM_THINK, device="cpu")),
        ("critic value-head", "policy", lambda d: load_critic(d, "value-head", fresh_head=True)),
        ("critic token-classification", "policy", lambda d: load_critic(d, "token-classification", fresh_head=True)),
        ("transformers generation", "policy", lambda d: make_generator("transformers", d, device="cpu")),
        ("vLLM generation", "policy", lambda d: VLLMGenerator(d)),
        ("local judge", "policy", lambda d: LocalJudge(d, JudgeCache(tmp_path / "judge.sqlite"), device="cpu")),
        ("prepare_model", "policy", lambda d: prepare_model(str(d), tmp_path / "prepared")),
        ("convert_to_zero", "policy", lambda d: convert_to_zero(d, tmp_path / "zero", think=True)),
        ("train_sft", "policy", lambda d: train_sft(d, sft_rows, out / "sft", SFTConfig(max_steps=1))),
        ("train_grpo", "policy", lambda d: train_grpo(d, rule_reward(d), train, None, out / "grpo",
                                                      GRPOConfig(max_steps=1))),
        ("train_dpo", "policy", lambda d: train_dpo(d, zoo["reward"], train, out / "dpo", DPOConfig(max_steps=1),
                                                    generation_backend="transformers")),
        ("train_ppo reward model", "reward",
         lambda d: train_ppo(zoo["llama-instruct"], d, train, None, out / "ppo-rm", PPOConfig(max_steps=1))),
        ("train_ppo policy", "policy", lambda d: train_ppo(d, zoo["reward"], train, None, out / "ppo",
                                                           PPOConfig(max_steps=1))),
    ]


LOADER_NAMES = ["load_causal_lm", "load_reward_model", "AnswerRewardScorer", "critic value-head",
                "critic token-classification", "transformers generation", "vLLM generation", "local judge",
                "prepare_model", "convert_to_zero", "train_sft", "train_grpo", "train_dpo", "train_ppo reward model",
                "train_ppo policy"]


@pytest.mark.parametrize("beside", [False, True], ids=["pickle-only", "pickle-beside-safetensors"])
@pytest.mark.parametrize("loader", LOADER_NAMES)
def test_every_loader_refuses_pickled_weights_without_reading_them(loader, beside, tiny_zoo, tmp_path):
    loaders = _loaders(tiny_zoo, tmp_path)
    (name, kind, call), = [entry for entry in loaders if entry[0] == loader]
    src = tiny_zoo["reward" if kind == "reward" else "llama-instruct"]
    model_dir = _copy_model(src, tmp_path / "model", weights=beside)
    sentinel = tmp_path / "unpickled"
    _plant_pickle(model_dir, sentinel)
    if beside:
        message = r"pickled weight files beside the safetensors \(pytorch_model.bin\)"
    else:
        message = r"no \*\.safetensors weights \(pytorch_model.bin\); rlmt loads safetensors only"
    with pytest.raises(UnsafeWeightsError, match=message) as err:
        call(model_dir)
    assert str(model_dir) in str(err.value)
    assert not sentinel.exists(), f"{name} unpickled pytorch_model.bin"


def test_the_same_loaders_accept_the_clean_dir(tiny_zoo, tmp_path):
    """The refusals above are about the pickle: without it the cheap loaders load (vLLM: not installed here)."""
    from rlmt.train.actor_critic import ValueHeadCritic, load_critic

    policy = _copy_model(tiny_zoo["llama-instruct"], tmp_path / "policy", weights=True)
    assert load_causal_lm(policy, device="cpu").num_parameters() > 1e6
    assert isinstance(load_critic(policy, "value-head", fresh_head=True), ValueHeadCritic)
    assert load_reward_model(_copy_model(tiny_zoo["reward"], tmp_path / "rm", weights=True), device="cpu") \
        .config.num_labels == 1


def test_resume_refuses_a_checkpoint_with_pickled_weights(tiny_zoo, tmp_path):
    """A step dir is resumed from only when its weights are safetensors; the Trainer would otherwise
    torch.load a pytorch_model.bin found there."""
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train import checkpoints as ckpt

    out = tmp_path / "ckpt"
    for step in (1, 2):
        staging = _copy_model(tiny_zoo["llama-instruct"], out / f"checkpoint-{step}", weights=True)
        for state in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json",
                      "training_args.bin"):
            (staging / state).write_text("{}")  # training state, not weights: allowed
        ckpt.finalize_checkpoint(staging, out, step, WARM_NOTHINK)
    assert ckpt.latest_checkpoint(out) == out / "step-2"
    sentinel = tmp_path / "unpickled"
    _plant_pickle(out / "step-2", sentinel)
    with pytest.raises(UnsafeWeightsError, match=r"step-2: pickled weight files beside the safetensors \(pytorch_model.bin\)"):
        ckpt.latest_checkpoint(out)
    (out / "step-2" / "model.safetensors").unlink()
    with pytest.raises(UnsafeWeightsError, match=r"step-2: no \*\.safetensors weights \(pytorch_model.bin\)"):
        ckpt.latest_checkpoint(out)
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- the custom-code trap

SENTINEL_CODE = '''\
"""Custom model code: importing this module is running it, and it says so on disk."""
import pathlib

pathlib.Path({sentinel!r}).write_text("custom code ran")

from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaForTokenClassification
from transformers import LlamaModel, TokenizersBackend


class SentinelConfig(LlamaConfig):
    model_type = {model_type!r}


class SentinelModel(LlamaModel):
    config_class = SentinelConfig


class SentinelForCausalLM(LlamaForCausalLM):
    config_class = SentinelConfig


class SentinelForSequenceClassification(LlamaForSequenceClassification):
    config_class = SentinelConfig


class SentinelForTokenClassification(LlamaForTokenClassification):
    config_class = SentinelConfig


class SentinelTokenizer(TokenizersBackend):
    pass
'''

AUTO_MAP = {
    "AutoConfig": "sentinel_code.SentinelConfig",
    "AutoModel": "sentinel_code.SentinelModel",
    "AutoModelForCausalLM": "sentinel_code.SentinelForCausalLM",
    "AutoModelForSequenceClassification": "sentinel_code.SentinelForSequenceClassification",
    "AutoModelForTokenClassification": "sentinel_code.SentinelForTokenClassification",
}


def _custom_code_model(src: Path, tmp_path: Path, *, model_type: str) -> tuple[Path, Path]:
    """A copy of `src` whose config and tokenizer config send every Auto class to sentinel_code.py.

    The directory name is unique: transformers caches custom modules by it, and a cached module
    would not run (nor write its sentinel) a second time.
    """
    sentinel = tmp_path / f"custom-code-ran-{model_type}"
    model_dir = _copy_model(src, tmp_path / f"remote_{uuid.uuid4().hex[:12]}", weights=True)
    (model_dir / "sentinel_code.py").write_text(SENTINEL_CODE.format(sentinel=str(sentinel), model_type=model_type))
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type=model_type, auto_map=AUTO_MAP)
    (model_dir / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": [None, "sentinel_code.SentinelTokenizer"]}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return model_dir, sentinel


def test_the_custom_code_trap_is_live(tiny_zoo, tmp_path):
    """Positive control: opting in runs the code (and the loaded class is the custom one)."""
    model_dir, sentinel = _custom_code_model(tiny_zoo["llama-instruct"], tmp_path, model_type="rlmt-sentinel")
    model = load_causal_lm(model_dir, device="cpu", trust_remote_code=True)
    assert sentinel.read_text() == "custom code ran"
    assert type(model).__name__ == "SentinelForCausalLM"


def test_a_known_architecture_with_an_auto_map_loads_the_library_class_and_runs_no_custom_code(tiny_zoo, tmp_path):
    """model_type llama + auto_map: by default the library's own Llama classes load; the code never runs."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from rlmt.train.actor_critic import ValueHeadCritic, load_critic

    policy, sentinel = _custom_code_model(tiny_zoo["llama-instruct"], tmp_path, model_type="llama")
    assert type(load_causal_lm(policy, device="cpu")) is LlamaForCausalLM
    assert type(load_tokenizer(policy)).__name__ == "TokenizersBackend"
    assert isinstance(load_critic(policy, "value-head", fresh_head=True), ValueHeadCritic)
    assert type(load_critic(policy, "token-classification", fresh_head=True).model).__name__ == \
        "LlamaForTokenClassification"
    reward, reward_sentinel = _custom_code_model(tiny_zoo["reward"], tmp_path / "rm", model_type="llama")
    assert type(load_reward_model(reward, device="cpu")) is LlamaForSequenceClassification
    load_tokenizer(reward)
    assert not sentinel.exists() and not reward_sentinel.exists()


@pytest.mark.parametrize("loader", ["policy", "tokenizer", "reward model", "critic value-head",
                                    "critic token-classification", "zero conversion"])
def test_custom_code_only_architecture_is_refused_by_default_and_its_code_never_runs(loader, tiny_zoo, tmp_path):
    """A model that exists only as custom code: every default load refuses it, naming trust_remote_code."""
    from rlmt.models.zero import convert_to_zero
    from rlmt.train.actor_critic import load_critic

    src = tiny_zoo["reward" if loader == "reward model" else "llama-instruct"]
    model_dir, sentinel = _custom_code_model(src, tmp_path, model_type="rlmt-sentinel")
    if loader == "tokenizer":  # the tokenizer config names the custom class only
        tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        tok_config["tokenizer_class"] = "SentinelTokenizer"
        (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_config))
    call = {
        "policy": lambda: load_causal_lm(model_dir, device="cpu"),
        "tokenizer": lambda: load_tokenizer(model_dir),
        "reward model": lambda: load_reward_model(model_dir, device="cpu"),
        "critic value-head": lambda: load_critic(model_dir, "value-head", fresh_head=True),
        "critic token-classification": lambda: load_critic(model_dir, "token-classification", fresh_head=True),
        "zero conversion": lambda: convert_to_zero(model_dir, tmp_path / "zero", think=True),
    }[loader]
    with pytest.raises(ValueError, match="trust_remote_code"):
        call()
    assert not sentinel.exists(), f"{loader}: custom code ran without trust_remote_code"


def test_training_cli_names_the_pickled_weights_and_exits_2(tiny_zoo, tmp_path, mlflow_uri):
    from typer.testing import CliRunner

    from rlmt.cli import app

    policy = _copy_model(tiny_zoo["llama-instruct"], tmp_path / "policy", weights=False)
    sentinel = tmp_path / "unpickled"
    _plant_pickle(policy, sentinel)
    res = CliRunner().invoke(app, ["train", "grpo", "--config", str(ROOT / "config/config.yaml"),
                                   "--cell", "grpo__llama-base__warm-start__nothink__tiny-rm__demo",
                                   "--policy", str(policy), "--reward-model", str(tiny_zoo["reward"]),
                                   "--train", str(_prompts(tmp_path / "train.parquet")), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert f"train grpo: {policy}: no *.safetensors weights (pytorch_model.bin)" in res.output
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- API keys never written

TEACHER_ANSWER = "<think>\nPlan: greet, then give two tips.\n</think>\n<response>\nWater them well. Ask a friend.\n</response>"


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_api_key_values_reach_no_file_the_teacher_and_judge_write(openai_server, tmp_path, mlflow_uri, caplog):
    """`rlmt data sft` (teacher) and `rlmt eval judge` against local servers that require a distinctive
    key: every file under the work dir (outputs, SQLite caches, the MLflow store and its artifacts,
    the command output and DEBUG logs) is searched for the key's value."""
    import logging
    import sqlite3

    import yaml
    from test_judge_responders import judge_responder, marked_answers, write_generations
    from typer.testing import CliRunner

    from rlmt.cli import app

    teacher_key = f"sk-rlmt-teacher-{uuid.uuid4().hex}"
    judge_key = f"sk-rlmt-judge-{uuid.uuid4().hex}"
    teacher = openai_server(lambda body: TEACHER_ANSWER, required_key=teacher_key)
    judge = openai_server(judge_responder, required_key=judge_key)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": text}]}) + "\n"
                               for i, text in enumerate(["How do I keep my houseplants alive during a holiday?",
                                                         "Explain why the sky looks blue during the day to a child."])))
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    # variable names that do not look like credentials: nothing masks them, only not writing the value helps
    cfg["sft_data"] = {"leak-check": {"prompts": [{"path": str(prompts), "format": "chat-jsonl"}], "n_prompts": None,
                                      "teacher": {"base_url": teacher.base_url, "model": "teacher-x",
                                                  "api_key_env": "RLMT_TEACHER_SESAME", "backoff_s": 0.0}}}
    cfg["evaluation"]["judges"] = {"remote": {"base_url": judge.base_url, "model": "gpt-4o",
                                              "api_key_env": "RLMT_JUDGE_SESAME",
                                              "cache_path": str(tmp_path / "judges/cache.sqlite")}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {"RLMT_TEACHER_SESAME": teacher_key, "RLMT_JUDGE_SESAME": judge_key}
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    sft = runner.invoke(app, ["data", "sft", "--config", str(config), "--name", "leak-check",
                              "--out-think", str(tmp_path / "sft/think.jsonl"),
                              "--out-nothink", str(tmp_path / "sft/nothink.jsonl")], env=env)
    assert sft.exit_code == 0, sft.output
    ids = ["wb-001", "wb-002", "wb-003"]
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, {"wb-001"}))
    judged = runner.invoke(app, ["eval", "judge", "--bench", "wildbench", "--config", str(config),
                                 "--generations", str(gens), "--out-judgments", str(tmp_path / "eval/j.jsonl"),
                                 "--out", str(tmp_path / "eval/scores.json"),
                                 "--option", f"path={ROOT / 'tests/fixtures/judged/wildbench/wildbench_v2.jsonl'}"],
                           env=env)
    assert judged.exit_code == 0, judged.output
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/commands.log").write_text(sft.output + judged.output + caplog.text)

    # the keys were really in use: every request carried one, and the work was done and recorded
    assert len(teacher.log) == 2 and len(judge.log) == 3
    assert {h["Authorization"] for h in teacher.headers_seen} == {f"Bearer {teacher_key}"}
    assert {h["Authorization"] for h in judge.headers_seen} == {f"Bearer {judge_key}"}
    with sqlite3.connect(tmp_path / "sft/teacher_cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2
    assert len(list(tmp_path.rglob("mlruns.db"))) == 1 and list((tmp_path / "mlruns").rglob("*.json"))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 12, [str(p) for p in written]

    # the search itself finds a value hidden in a SQLite file (WAL and all), so an empty result means something
    canary = tmp_path / "canary.sqlite"
    with sqlite3.connect(canary) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (judge_key,))
    assert _files_holding(tmp_path, judge_key.encode()) == ["canary.sqlite"]
    canary.unlink()

    for key in (teacher_key, judge_key):
        assert _files_holding(tmp_path, key.encode()) == []
        assert _files_holding(tmp_path, key.split("-")[-1].encode()) == []  # nor its distinctive part alone
