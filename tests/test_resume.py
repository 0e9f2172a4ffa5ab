"""kill -9 mid-run, rerun the same command: the resumed run equals one that was never killed.

For each trainer (SFT, DPO, GRPO, PPO) three jobs run through the CLI on tiny models: **A** runs
uninterrupted; **B**, the same command into another directory, is killed with SIGKILL once a
checkpoint is complete; **C** is B's command again and resumes. A and B start together (each
on one thread, the two fit on two cores).

The contract checked, per trainer:

- C resumes from B's newest complete checkpoint (not from scratch) and finishes; B's MLflow run
  is ended as KILLED, C's is FINISHED;
- C's final weights equal A's within ``WEIGHT_ATOL`` on every tensor, while training moved them
  by far more than that (so equality is not the trivial "nothing trained");
- what C did after the resume — per-step losses / rewards / DPO log-probs (``METRIC_RTOL``) and
  the sampled completions (GRPO, PPO: the same text) — is what A did at those steps.

Tolerances: A and C do the same float32 arithmetic in the same order on one thread, so they
agree far inside these bounds; the bounds leave room for a different CPU's kernels, not for a
different batch, data order or random stream (those move weights by > 1e-3 after a step).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
import yaml
from resume_helpers import (
    complete_steps,
    job_env,
    kill_after_checkpoint,
    log_history,
    max_weight_diff,
    metric_by_step,
    mlflow_runs,
    rlmt,
    samples_table,
    start,
    wait_ok,
)

from rlmt.thinking import WARM_NOTHINK, sft_messages

# each test waits up to 600 s for the kill, then up to 900 s for the resumed and the uninterrupted job
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[1]
WEIGHT_ATOL = 1e-5
METRIC_RTOL = 1e-4
WORDS = "plan write answer the user list short clear help code story kind calm".split()
CELLS = {algo: f"{algo}__llama-base__warm-start__nothink__tiny-rm__demo" for algo in ("grpo", "dpo", "ppo")}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """SFT rows, 12 demo prompts, and a config whose trainers checkpoint every 2 steps."""
    d = tmp_path_factory.mktemp("resume")
    rng = random.Random(1)
    rows = [([{"role": "user", "content": f"Tell me {i} things about {rng.choice(WORDS)}"}],
             " ".join(rng.choices(WORDS, k=8))) for i in range(16)]
    (d / "sft.jsonl").write_text("".join(
        json.dumps({"id": str(i), "messages": sft_messages(p, "", a, WARM_NOTHINK)}) + "\n"
        for i, (p, a) in enumerate(rows)))
    demo = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()][:12]
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 20} for r in demo]) \
        .write_parquet(d / "train.parquet")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    rollout = {"max_prompt_length": 256, "max_completion_length": 12}
    cfg["algorithms"] = {
        "sft": {"learning_rate": 1e-3, "num_train_epochs": 1, "global_batch_size": 2, "per_device_train_batch_size": 2,
                "max_length": 96, "save_steps": 2, "save_total_limit": 1},
        "grpo": {"learning_rate": 1e-3, "prompts_per_step": 2, "num_generations": 4, "per_device_train_batch_size": 8,
                 "max_steps": 6, "rollout": rollout, "checkpoints": {"save_steps": 2, "save_total_limit": None},
                 "log_samples_every": 1},
        "dpo": {"samples_per_prompt": 4, "min_parsable": 2, "learning_rate": 1e-3, "num_train_epochs": 2,
                "global_batch_size": 2, "per_device_train_batch_size": 2, "max_length": 96, "rollout": rollout,
                "checkpoints": {"save_steps": 2, "save_total_limit": 1}},
        "ppo": {"learning_rate": 1e-3, "critic_lr": 1e-3, "prompts_per_step": 4, "mini_batch_size": 2,
                "micro_batch_size": 2, "max_steps": 6, "critic": "value-head", "rollout": rollout,
                "checkpoints": {"save_steps": 2, "save_total_limit": None}, "log_samples_every": 1},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


class Trio:
    """Run A (uninterrupted) and B (killed after `kill_step`), then C (B's command again)."""

    def __init__(self, work: Path, name: str, command, ckpt_dir, kill_step: int = 2, on_kill=None):
        self.root = work / name
        self.a, self.b = self.root / "a", self.root / "b"
        for d in (self.a, self.b):
            d.mkdir(parents=True)
        self.db_a, self.db_b = self.a / "mlruns.db", self.b / "mlruns.db"
        self.out_a, self.out_b = self.a / "out", self.b / "out"
        procs = [start(command(self.out_a), job_env(self.db_a), self.a, self.a / "run.log"),
                 start(command(self.out_b), job_env(self.db_b), self.b, self.b / "killed.log")]
        try:
            self.at_kill = kill_after_checkpoint(procs[1], ckpt_dir(self.out_b), kill_step)
            self.final_existed_at_kill = (self.out_b / "final").exists() or (self.out_b / "config.json").exists()
            self.seen_at_kill = on_kill(self.out_b) if on_kill else None
            procs.append(start(command(self.out_b), job_env(self.db_b), self.b, self.b / "resumed.log"))
            self.log_c = wait_ok(procs[2])
            self.log_a = wait_ok(procs[0])
        finally:
            for proc in procs:  # a failed check leaves no job running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=60)
        self.resumed_from = self.at_kill[-1]

    def runs_b(self, stage: str):
        runs = mlflow_runs(self.db_b, stage)
        assert [r.info.status for r in runs] == ["KILLED", "FINISHED"], [r.info.status for r in runs]
        return runs

    def run_a(self, stage: str):
        (run,) = mlflow_runs(self.db_a, stage)
        assert run.info.status == "FINISHED"
        return run


def _same_metric(trio: Trio, stage: str, key: str, steps: range) -> None:
    a = metric_by_step(trio.db_a, trio.run_a(stage).info.run_id, key)
    c = metric_by_step(trio.db_b, trio.runs_b(stage)[1].info.run_id, key)
    assert min(c) == trio.resumed_from + 1, f"the resumed run logged {key} from step {min(c)}"
    for s in steps:
        assert c[s] == pytest.approx(a[s], rel=METRIC_RTOL, abs=1e-6), (key, s, a[s], c[s])


def test_sft_kill_9_resumes_and_matches_the_uninterrupted_run(work, tiny_zoo):
    """16 rows, batch 2: 8 steps, a checkpoint every 2; killed after step 2."""
    def command(out):
        return rlmt("train", "sft", "--config", str(work / "config.yaml"), "--model", str(tiny_zoo["llama-instruct"]),
                    "--data", str(work / "sft.jsonl"), "--out", str(out))

    trio = Trio(work, "sft", command, lambda out: Path(str(out) + ".work"))
    assert not trio.final_existed_at_kill and trio.resumed_from < 8
    assert not Path(str(trio.out_b) + ".work").exists()  # the work dir goes once the model is in place
    _same_metric(trio, "sft", "loss", range(trio.resumed_from + 1, 9))
    assert max_weight_diff(trio.out_a, trio.out_b) <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a, tiny_zoo["llama-instruct"]) > 100 * WEIGHT_ATOL


def test_dpo_kill_9_resumes_on_exactly_the_same_pairs_in_the_same_order(work, tiny_zoo):
    """Pairs are built once, before training, and reused by the resumed run: B's pairs (read at the
    kill) are C's and A's, and C's per-step chosen/rejected log-probs — which depend on which pairs
    a step sees — are A's at the same steps."""
    def command(out):
        return rlmt("train", "dpo", "--config", str(work / "config.yaml"), "--cell", CELLS["dpo"],
                    "--policy", str(tiny_zoo["llama-instruct"]), "--reward-model", str(tiny_zoo["reward"]),
                    "--train", str(work / "train.parquet"), "--out", str(out))

    def pairs_files(out: Path) -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((out / "pairs").iterdir())}

    trio = Trio(work, "dpo", command, lambda out: out, on_kill=pairs_files)
    pairs_b = trio.out_b / "pairs"
    # C trained on the pairs B wrote before it was killed: same bytes, never rewritten
    assert sorted(trio.seen_at_kill) == ["stats.json", "train.parquet", "val.parquet"]
    assert pairs_files(trio.out_b) == trio.seen_at_kill
    # ... and they are the pairs the uninterrupted run built and trained on
    samples_b = (trio.out_b / "dpo_samples.jsonl").read_text()
    train_a = pl.read_parquet(trio.out_a / "pairs/train.parquet")
    train_b = pl.read_parquet(pairs_b / "train.parquet")
    assert train_a.select("id", "prompt", "chosen", "rejected").to_dicts() == \
        train_b.select("id", "prompt", "chosen", "rejected").to_dicts()
    assert train_b["chosen_score"].to_list() == pytest.approx(train_a["chosen_score"].to_list(), rel=METRIC_RTOL)
    assert (trio.out_a / "dpo_samples.jsonl").read_text() == samples_b
    n_pairs = len(train_b)
    assert n_pairs >= 8
    steps = 2 * -(-n_pairs // 2)  # two epochs of ceil(pairs / 2) batches of 2
    last = complete_steps(trio.out_b)[-1]
    assert last == steps and trio.resumed_from < steps and not trio.final_existed_at_kill
    a, c = log_history(trio.out_a / f"step-{steps}"), log_history(trio.out_b / f"step-{steps}")
    for s in range(trio.resumed_from + 1, steps + 1):
        for key in ("logps/chosen", "logps/rejected", "rewards/margins", "loss"):
            assert c[s][key] == pytest.approx(a[s][key], rel=METRIC_RTOL, abs=1e-6), (key, s)
    runs = trio.runs_b("dpo")
    assert min(metric_by_step(trio.db_b, runs[1].info.run_id, "loss")) == trio.resumed_from + 1
    assert max_weight_diff(trio.out_a / "final", trio.out_b / "final") <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a / "final", tiny_zoo["llama-instruct"]) > 100 * WEIGHT_ATOL


def test_grpo_resumed_run_draws_the_same_samples_and_ends_at_the_same_weights(work, tiny_zoo):
    def command(out):
        return rlmt("train", "grpo", "--config", str(work / "config.yaml"), "--cell", CELLS["grpo"],
                    "--policy", str(tiny_zoo["llama-instruct"]), "--reward-model", str(tiny_zoo["reward"]),
                    "--train", str(work / "train.parquet"), "--out", str(out))

    trio = Trio(work, "grpo", command, lambda out: out)
    assert not trio.final_existed_at_kill and trio.resumed_from < 6
    assert complete_steps(trio.out_b) == complete_steps(trio.out_a) == [2, 4, 6]
    _same_metric(trio, "grpo", "reward", range(trio.resumed_from + 1, 7))
    run_a, run_c = trio.run_a("grpo").info.run_id, trio.runs_b("grpo")[1].info.run_id
    for s in range(trio.resumed_from + 1, 7):
        rows_a, rows_c = samples_table(trio.db_a, run_a, s), samples_table(trio.db_b, run_c, s)
        assert len(rows_a) == 8
        assert [(r["prompt"], r["answer"]) for r in rows_c] == [(r["prompt"], r["answer"]) for r in rows_a], s
        assert [r["reward"] for r in rows_c] == pytest.approx([r["reward"] for r in rows_a], rel=METRIC_RTOL)
    for s in (4, 6):
        assert max_weight_diff(trio.out_a / f"step-{s}", trio.out_b / f"step-{s}") <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a / "final", trio.out_b / "final") <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a / "final", tiny_zoo["llama-instruct"]) > 100 * WEIGHT_ATOL


def test_ppo_resumed_run_draws_the_same_samples_and_ends_at_the_same_weights(work, tiny_zoo):
    def command(out):
        return rlmt("train", "ppo", "--config", str(work / "config.yaml"), "--cell", CELLS["ppo"],
                    "--policy", str(tiny_zoo["llama-instruct"]), "--reward-model", str(tiny_zoo["reward"]),
                    "--train", str(work / "train.parquet"), "--out", str(out))

    trio = Trio(work, "ppo", command, lambda out: out)
    assert not trio.final_existed_at_kill and trio.resumed_from < 6
    assert f"resuming from {trio.out_b / f'step-{trio.resumed_from}'} at step {trio.resumed_from}" in trio.log_c
    a, c = log_history(trio.out_a / "step-6"), log_history(trio.out_b / "step-6")
    assert sorted(c) == list(range(1, 7))
    for s in range(trio.resumed_from + 1, 7):
        for key in ("diag/reward_mean", "policy/loss", "critic/loss", "diag/completion_tokens_mean"):
            assert c[s][key] == pytest.approx(a[s][key], rel=METRIC_RTOL, abs=1e-6), (key, s)
    run_a, run_c = trio.run_a("ppo").info.run_id, trio.runs_b("ppo")[1].info.run_id
    for s in range(trio.resumed_from + 1, 7):
        rows_a, rows_c = samples_table(trio.db_a, run_a, s), samples_table(trio.db_b, run_c, s)
        assert len(rows_a) == 4
        assert [(r["prompt"], r["answer"]) for r in rows_c] == [(r["prompt"], r["answer"]) for r in rows_a], s
    assert max_weight_diff(trio.out_a / "final", trio.out_b / "final") <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a / "step-6/critic", trio.out_b / "step-6/critic",
                           "value_head.safetensors") <= WEIGHT_ATOL
    assert max_weight_diff(trio.out_a / "final", tiny_zoo["llama-instruct"]) > 100 * WEIGHT_ATOL
    # the diagnostics' rollouts file (rlmt.diagnostics): the killed attempt's steps and the resumed run's rewrite
    # of the steps after its checkpoint read back as the uninterrupted run's, one record a step
    from rlmt.diagnostics import read_rollouts

    steps_a, steps_c = read_rollouts(trio.out_a), read_rollouts(trio.out_b)
    assert [s.step for s in steps_c] == [s.step for s in steps_a] == list(range(1, 7))
    for a, c in zip(steps_a, steps_c):
        assert c.answer_tokens == a.answer_tokens and c.clipped == a.clipped, a.step
        assert c.reward == pytest.approx(a.reward, rel=METRIC_RTOL, abs=1e-6), a.step
