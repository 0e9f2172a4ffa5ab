"""What the MLflow runs record besides params and metrics: data files as dataset inputs, checkpoints as
logged models carrying their scores, system metrics on training and generation runs.

Every expected digest is computed here from the bytes the test wrote, not by rlmt.tracking. The training
commands' records (datasets, system metrics, the SFT policy as a logged model) are checked on the real Snakemake
run of tests/test_e2e.py; `rlmt train rm` runs TRL's RewardTrainer for real here.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _expected_model_digest(folder: Path, leave_out: frozenset[str] = frozenset()) -> str:
    """The documented digest of a model dir: names + sizes, small files whole, big files' first and last MiB
    (files named in `leave_out` are not part of the model)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and q.name not in leave_out):
        data = p.read_bytes()
        h.update(f"{p.relative_to(folder)}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).hexdigest().encode() if len(data) <= 4 * MiB else data[:MiB] + data[-MiB:])
    return h.hexdigest()


def _checkpoint(folder: Path, seed: int = 0) -> Path:
    import random

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "b"]}))
    (folder / "model.safetensors").write_bytes(random.Random(seed).randbytes(5 * MiB))
    return folder


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


@pytest.fixture()
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # create_external_model writes its MLmodel stub under ./mlruns
    return uri


# --------------------------------------------------------------------------- datasets


def test_data_files_are_dataset_inputs_with_their_file_digest_source_and_profile(store, tmp_path):
    from rlmt.tracking import log_dataset_input, stage_run

    train = _write_parquet(tmp_path / "mixtures" / "demo" / "train.parquet",
                           [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}])
    items = tmp_path / "benchmarks" / "ifeval" / "items.jsonl"
    items.parent.mkdir(parents=True)
    items.write_text('{"id": "q1", "messages": []}\n{"id": "q2", "messages": []}\n{"id": "q3", "messages": []}')
    with stage_run("grpo", cell="c1", inputs={"train": train}) as run:
        assert log_dataset_input(train) == _sha16(train)
        log_dataset_input(items, context="evaluation")
        assert log_dataset_input(None) is None  # an optional input that was not given
    got = {d.dataset.name: d for d in _client(store).get_run(run.info.run_id).inputs.dataset_inputs}
    assert set(got) == {"demo-train", "ifeval-items"}
    d = got["demo-train"]
    assert d.dataset.digest == _sha16(train)
    assert json.loads(d.dataset.source) == {"uri": str(train.resolve())} and d.dataset.source_type == "local"
    assert {t.key: t.value for t in d.tags}["mlflow.data.context"] == "training"
    profile = json.loads(d.dataset.profile)
    assert profile["num_rows"] == 3 and profile["columns"] == {"id": "string", "n": "int64"}
    assert profile["num_bytes"] == train.stat().st_size
    # the run's input tag and its dataset name the same version of the file
    assert _client(store).get_run(run.info.run_id).data.tags["rlmt.input.train"] == f"{train}@{_sha16(train)}"
    i = got["ifeval-items"]
    assert i.dataset.digest == _sha16(items) and {t.key: t.value for t in i.tags}["mlflow.data.context"] == "evaluation"
    assert json.loads(i.dataset.profile)["num_lines"] == 3  # the last line has no newline
    assert json.loads(i.dataset.profile)["columns"] == ["id", "messages"]


def test_a_file_is_hashed_once_per_process_and_again_when_it_changes(store, tmp_path, monkeypatch):
    from rlmt import tracking

    path = _write_parquet(tmp_path / "mix" / "val.parquet", [{"id": "a"}])
    time.sleep(1.1)  # older than the racy window: its digest may be cached
    reads = []
    real = tracking._hash_file
    monkeypatch.setattr(tracking, "_hash_file", lambda p, *a, **k: reads.append(Path(p)) or real(p, *a, **k))
    with tracking.stage_run("ppo", inputs={"val": path}):
        tracking.log_dataset_input(path, context="validation")
        tracking.log_dataset_input(path, name="again", context="validation")
    assert reads == [path]
    before = _sha16(path)
    _write_parquet(path, [{"id": "b"}])  # rewritten: same name, new bytes
    assert tracking.digest(path)[:16] == _sha16(path) != before
    assert reads == [path, path]


def test_other_ranks_log_and_hash_no_dataset(store, tmp_path, monkeypatch):
    from rlmt import tracking

    path = _write_parquet(tmp_path / "mix" / "train.parquet", [{"id": "a"}])
    reads = []
    monkeypatch.setattr(tracking, "_hash_file", lambda p, *a, **k: reads.append(p) or ("0" * 64, 0))
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("grpo", inputs={"train": path}) as run:
        assert run is None
        assert tracking.log_dataset_input(path) is None
    assert reads == []


def test_an_unreadable_data_file_is_reported_and_the_run_goes_on(store, tmp_path, caplog):
    from rlmt.tracking import log_dataset_input, stage_run

    broken = tmp_path / "mix" / "train.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not parquet")
    with stage_run("grpo") as run:
        assert log_dataset_input(broken) is None
        assert log_dataset_input(tmp_path / "missing.jsonl") is None
    assert "train.parquet not logged" in caplog.text and "missing.jsonl not logged" in caplog.text
    got = _client(store).get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.inputs.dataset_inputs == []


def test_curate_and_training_log_one_and_the_same_dataset(store, tmp_path):
    """The mixture file curate writes and the runs that train on it name the same MLflow dataset."""
    from rlmt.tracking import log_dataset_input, stage_run

    train = _write_parquet(tmp_path / "results" / "data" / "mixtures" / "demo" / "train.parquet", [{"id": "a"}])
    with stage_run("curate") as curate:
        log_dataset_input(train, "demo-train", "training")  # what rlmt.data.curate.log_curation calls
    with stage_run("grpo") as grpo:
        log_dataset_input(train)
    a, b = (_client(store).get_run(r.info.run_id).inputs.dataset_inputs[0].dataset for r in (curate, grpo))
    assert (a.name, a.digest) == (b.name, b.digest) == ("demo-train", _sha16(train))


# --------------------------------------------------------------------------- checkpoints as logged models


def test_model_digest_reads_metadata_whole_and_weights_by_their_ends(tmp_path, monkeypatch):
    from rlmt import tracking

    ckpt = _checkpoint(tmp_path / "ckpt")
    hashed = []
    real = tracking._hash_file
    monkeypatch.setattr(tracking, "_hash_file", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k))
    d = tracking.model_digest(ckpt)
    assert d == _expected_model_digest(ckpt)
    assert sorted(hashed) == ["config.json", "tokenizer.json"]  # the 5 MiB weights were not read whole

    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # a value in the last MiB
    weights.write_bytes(bytes(data))
    assert tracking.model_digest(ckpt) != d
    data[-10] ^= 0xFF
    data[len(data) // 2] ^= 0xFF  # the middle is not sampled: what the digest does not cover
    weights.write_bytes(bytes(data))
    assert tracking.model_digest(ckpt) == d
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    assert tracking.model_digest(ckpt) != d
    assert tracking.model_digest(tmp_path / "nope") == "missing"


def test_the_selected_checkpoint_is_a_logged_model_of_its_training_run(store, tmp_path):
    """train.job.finish: final/ becomes an external logged model (path, digest, step, rule, val reward)."""
    from mlflow.entities import LoggedModelStatus

    from rlmt.thinking import WARM_NOTHINK
    from rlmt.tracking import stage_run
    from rlmt.train import checkpoints as ckpt
    from rlmt.train.job import finish

    out = tmp_path / "checkpoints" / "grpo__cell"
    for step, reward in ((2, 0.25), (4, 0.5), (6, 0.375)):
        d = _checkpoint(out / f"step-{step}", seed=step)
        (d / ckpt.META_FILE).write_text(json.dumps({"step": step, "val_reward": reward}))
    with stage_run("grpo", cell="grpo__cell") as run:
        final = finish(out, WARM_NOTHINK, "best_val_reward")
    client = _client(store)
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert len(outputs) == 1 and outputs[0].step == 4
    model = client.get_logged_model(outputs[0].model_id)
    assert model.name == "grpo__cell" and model.model_type == "rlmt-checkpoint"
    assert model.source_run_id == run.info.run_id and model.status == LoggedModelStatus.READY
    assert model.tags["rlmt.checkpoint.path"] == str(final.resolve())
    assert model.tags["rlmt.checkpoint.digest"] == _expected_model_digest(final)
    assert model.params["selected_step"] == "4" and model.params["select_rule"] == "best_val_reward"
    assert model.params["source"] == str(out / "step-4")
    [val] = [m for m in model.metrics if m.key == "selected.val_reward"]
    assert val.value == pytest.approx(0.5, abs=1e-12) and val.step == 4
    # nothing of the weights was copied into MLflow's artifact store
    stored = Path(model.artifact_location.removeprefix("file://"))
    files = [p for p in stored.rglob("*") if p.is_file()] if stored.exists() else []
    assert all(p.name != "model.safetensors" for p in files) and sum(p.stat().st_size for p in files) < 64 * 1024


def test_collect_links_the_scores_to_the_checkpoint_behind_them(store, tmp_path):
    """`rlmt eval collect --checkpoint DIR`: the training run's logged model gets the benchmark scores."""
    from typer.testing import CliRunner

    from rlmt.cli import app
    from rlmt.tracking import log_checkpoint_model, stage_run

    final = _checkpoint(tmp_path / "checkpoints" / "cellx" / "final")
    with stage_run("grpo") as train:
        made = log_checkpoint_model(final, "cellx", step=4)
    scores = []
    for bench, value in (("ifeval", 61.5), ("demo-if", 40.0)):
        path = tmp_path / "eval" / "cellx" / bench / "scores.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"benchmark": bench, "n": 10, "n_failed": 0,
                                    "metrics": {"score": {"value": value, "ci_low": value - 5, "ci_high": value + 5}}}))
        scores.append(str(path))
    result = CliRunner().invoke(app, ["eval", "collect", *scores, "--model-name", "cellx", "--config",
                                      str(ROOT / "config/config.yaml"), "--checkpoint", str(final),
                                      "--out", str(tmp_path / "eval" / "cellx" / "scores.json")])
    assert result.exit_code == 0, result.output
    client = _client(store)
    exp = client.get_experiment_by_name("rlmt").experiment_id
    [found] = client.search_runs([exp], filter_string="tags.`rlmt.stage` = 'collect'")
    collect = client.get_run(found.info.run_id)  # search results leave a run's model inputs out
    assert [m.model_id for m in collect.inputs.model_inputs] == [made]
    assert collect.data.tags["rlmt.input.checkpoint"] == f"{final}@{_expected_model_digest(final)[:16]}"
    model = client.get_logged_model(made)
    got = {m.key: m.value for m in model.metrics}
    assert got["ifeval.score"] == pytest.approx(61.5, abs=1e-9) and got["demo_if.score"] == pytest.approx(40.0, abs=1e-9)
    assert got["ifeval.ci_low"] == pytest.approx(56.5, abs=1e-9)
    assert {m.run_id for m in model.metrics} == {collect.info.run_id}
    assert train.info.run_id != collect.info.run_id
    # a model directory no job recorded (a prepared base model) gets its logged model at collect
    base = _checkpoint(tmp_path / "models" / "llama-base")
    with stage_run("collect") as run:
        created = log_checkpoint_model(base, "llama-base", role="input")
    assert created != made and client.get_logged_model(created).tags["rlmt.checkpoint.path"] == str(base.resolve())
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [created]


def test_a_retrained_checkpoint_is_a_new_logged_model(store, tmp_path):
    """Same directory, new weights: collect must not attach the scores to the old model."""
    import shutil

    from rlmt.tracking import log_checkpoint_model, stage_run

    final = _checkpoint(tmp_path / "final", seed=1)
    with stage_run("grpo"):
        first = log_checkpoint_model(final, "c", step=2)
    shutil.rmtree(final)
    _checkpoint(final, seed=2)
    with stage_run("grpo"):
        second = log_checkpoint_model(final, "c", step=2)
    with stage_run("collect"):
        used = log_checkpoint_model(final, "c", role="input")
    assert first != second and used == second
    with stage_run("collect"):
        assert log_checkpoint_model(tmp_path / "nope", "c", role="input") is None
    assert log_checkpoint_model(final, "c") is None  # no active run: nothing recorded


# --------------------------------------------------------------------------- system metrics


def test_system_metrics_are_sampled_while_the_run_lives_and_the_sampler_stops(store, monkeypatch):
    from rlmt.tracking import stage_run

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")  # ignored: stage_run's argument decides
    with stage_run("generate", system_metrics=0.2) as on:
        assert len(_monitor_threads()) == 1
        time.sleep(1.2)
    assert _monitor_threads() == []
    with stage_run("prepare") as off:
        time.sleep(0.5)
    client = _client(store)
    keys = set(client.get_run(on.info.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    assert len(client.get_metric_history(on.info.run_id, "system/cpu_utilization_percentage")) >= 2
    assert not any(k.startswith("system/") for k in client.get_run(off.info.run_id).data.metrics)


def test_a_run_shorter_than_one_sampling_interval_still_gets_a_system_sample(store):
    """MLflow's sampler publishes whole intervals only: a 60 s interval and a run of a moment would log nothing
    (a quick generate job did so 1 time in 3); stopping the sampler publishes what it holds."""
    from rlmt.tracking import stage_run

    with stage_run("generate", system_metrics=60) as quick:
        pass
    assert _monitor_threads() == []
    history = _client(store).get_metric_history(quick.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) == 1


def test_a_failing_run_stops_its_sampler_too(store):
    from rlmt.tracking import stage_run

    with pytest.raises(RuntimeError):
        with stage_run("sft", system_metrics=0.2):
            time.sleep(0.3)
            raise RuntimeError("boom")
    assert _monitor_threads() == []


# --------------------------------------------------------------------------- the commands' call sites


def _config(tmp_path: Path, interval: float | None) -> Path:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["tracking"] = {**cfg.get("tracking", {}), "system_metrics_interval_s": interval}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_generate_logs_its_prompts_and_system_metrics(tiny_zoo, store, tmp_path):
    from typer.testing import CliRunner

    from rlmt.cli import app

    prompts = tmp_path / "data" / "benchmarks" / "demo-if" / "items.jsonl"
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Say {i}."}]}) + "\n"
                               for i in range(2)))
    config = _config(tmp_path, 0.1)
    args = ["eval", "generate", "--config", str(config), "--model", str(tiny_zoo["llama-instruct"]),
            "--prompts", str(prompts), "--out", str(tmp_path / "generations.jsonl"), "--backend", "transformers",
            "--max-new-tokens", "4", "--model-name", "tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    client = _client(store)
    [run] = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id],
                               filter_string="tags.`rlmt.stage` = 'generate'")
    [d] = run.inputs.dataset_inputs
    assert (d.dataset.name, d.dataset.digest) == ("demo-if-items", _sha16(prompts))
    assert {t.key: t.value for t in d.tags}["mlflow.data.context"] == "evaluation"
    assert any(k.startswith("system/") for k in run.data.metrics)
    assert _monitor_threads() == []


def _held_out_by_hand(pair_id: str, fraction: float = 0.1, seed: int = 0) -> bool:
    """rlmt.train.reward_model's documented split, written out here: the first 8 bytes of sha256("<seed>:<id>"),
    big-endian, over 2**64, under the eval fraction (0.1 by default)."""
    h = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def _reward_by_hand(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """The one-label score of prompt + answer, one unpadded sequence through transformers itself (the reward
    model's own chat template, BOS only where the template did not write it)."""
    import torch

    text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"))["input_ids"]
    with torch.inference_mode():
        return float(model(torch.tensor([ids])).logits[0, 0])


@pytest.mark.slow
def test_reward_model_command_trains_for_real_and_records_its_data_model_and_accuracy(tiny_zoo, store, tmp_path,
                                                                                      one_torch_thread):
    """`rlmt train rm` runs TRL's RewardTrainer on the tiny llama: the pairs file is the run's dataset, the trained
    dir its logged model, and the accuracy on that model is the held-out pairs' accuracy worked out here from the
    saved weights (the split by its documented hash, each answer scored alone by transformers). The SFT command's
    record is checked on the real SFT runs of tests/test_e2e.py."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from typer.testing import CliRunner

    from rlmt.cli import app

    config = _config(tmp_path, None)  # system metrics off: none logged
    pairs = [{"id": f"pair-{i}", "prompt": [{"role": "user", "content": f"Tell me about topic {i}."}],
              "chosen": f"Here is a clear overview of topic {i}: the basics, then examples.", "rejected": "No."}
             for i in range(24)]
    held = [p for p in pairs if _held_out_by_hand(p["id"])]
    assert 1 <= len(held) < len(pairs)  # the hash holds out some of these ids (else the command would refuse)
    path = tmp_path / "results" / "data" / "rm" / "pairs.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "models" / "my-rm"
    res = CliRunner().invoke(app, ["train", "rm", "--config", str(config), "--backbone", str(tiny_zoo["llama-instruct"]),
                                   "--pairs", str(path), "--out", str(out), "--learning-rate", "1e-3",
                                   "--batch-size", "8", "--max-length", "128"])
    assert res.exit_code == 0, res.output

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1
    margins = [_reward_by_hand(model, tokenizer, p["prompt"], p["chosen"])
               - _reward_by_hand(model, tokenizer, p["prompt"], p["rejected"]) for p in held]
    # a margin within 1e-4 is a tie, half a win (the documented rule: round-off between batch shapes must not decide)
    accuracy = sum(0.5 if abs(m) <= 1e-4 else float(m > 0) for m in margins) / len(held)

    client = _client(store)
    [found] = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id],
                                 filter_string="tags.`rlmt.stage` = 'rm'")
    run = client.get_run(found.info.run_id)
    assert run.info.status == "FINISHED"
    [d] = run.inputs.dataset_inputs
    assert (d.dataset.name, d.dataset.digest) == ("rm-pairs", _sha16(path))
    [output] = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "my-rm" and logged.tags["rlmt.checkpoint.path"] == str(out.resolve())
    assert logged.tags["rlmt.checkpoint.digest"] == _expected_model_digest(out)
    got = {m.key: m.value for m in logged.metrics}
    assert got["rm.held_out_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert got["rm.held_out_pairs"] == len(held)
    assert got["rm.train_loss"] > 0  # Bradley-Terry loss, -log sigmoid(margin): positive
    assert f"held-out pairwise accuracy {accuracy:.3f} on {len(held)} pairs" in res.output
    assert not any(k.startswith("system/") for k in run.data.metrics)
