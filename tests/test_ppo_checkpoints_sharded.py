"""PPO under FSDP2 on 2 gloo processes: sharded checkpoints, resume, and a start without full copies
(issue 28, defects 6 and 10), plus the exported policy's dtype and the checkpoint reader's refusal of
foreign pickles.

- **Resume** (``rlmt launch`` with ``config/accelerate/fsdp2.yaml``, the helpers of
  ``test_multiprocess_trainers``): run A trains 4 steps; run B trains 2 steps into another dir and
  stops; run C, B's command with 4 steps, resumes from B's ``step-2``. C's final policy and critic
  equal A's within ``WEIGHT_ATOL`` (both do the same fp32 arithmetic in the same order on one thread
  per process; a training state that was not restored exactly, e.g. fresh Adam moments, moves weights
  by more than 1e-4 after one step at this learning rate), while training moved them by more than
  100 x that. Each rank wrote its own shard file of the training state, and every AdamW moment in
  it is split between the two rank files: no process held or wrote a whole one.
- **Start** (two processes spawned here, calling ``train_ppo``): every module FSDP2 shards holds
  only meta-device parameters when it is sharded, on both ranks (no rank materialises the model
  before sharding); the sharded weights equal the initial policy's and a fresh critic's exactly
  (learning rates 0: AdamW then adds exactly zero, so one step leaves them as loaded); the job's
  process group carries the configured timeout.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
import yaml
from ports import free_port
from test_multiprocess_trainers import CELL, job, launch  # noqa: F401  (job: the module fixture launch needs)
from test_ppo import LetterShareReward, write_prompts

from rlmt.thinking import WARM_NOTHINK

WEIGHT_ATOL = 1e-5
METRIC_RTOL = 1e-4


# ----------------------------------------------------------------------------- resume from sharded checkpoints


def _job_with(job: dict, name: str, **ppo) -> dict:
    """`job` with a config whose PPO settings are the fixture's updated with `ppo`."""
    cfg = yaml.safe_load(Path(job["config"]).read_text())
    cfg["algorithms"]["ppo"].update(ppo)
    path = Path(job["work"]) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {**job, "config": path}


def _ppo_args(job: dict, out: Path) -> list[str]:
    return ["ppo", "--cell", CELL.format(algo="ppo"), "--policy", str(job["zoo"]["llama-instruct"]),
            "--reward-model", str(job["zoo"]["reward"]), "--train", str(job["work"] / "train.parquet"),
            "--out", str(out)]


@pytest.fixture(scope="module")
def resumed(job):
    """A: 4 steps; B: 2 steps (stops after step-2's checkpoint); C: B's dir again with 4 steps."""
    settings = {"learning_rate": 1e-3, "critic_lr": 1e-3, "val_prompts": 0, "checkpoints": {"save_steps": 2}}
    four, two = _job_with(job, "ppo-4-steps", max_steps=4, **settings), _job_with(job, "ppo-2-steps", max_steps=2,
                                                                                    **settings)
    out_a, out_b = job["work"] / "ppo-a", job["work"] / "ppo-b"
    a = launch(four, "ppo-uninterrupted", "fsdp2.yaml", _ppo_args(job, out_a))
    b = launch(two, "ppo-first-leg", "fsdp2.yaml", _ppo_args(job, out_b))
    c = launch(four, "ppo-resumed", "fsdp2.yaml", _ppo_args(job, out_b))
    return {"a": a, "b": b, "c": c, "out_a": out_a, "out_b": out_b}


def _final_params(result: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(result["reports"] / "ppo-rank0.safetensors"))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first one runs the module fixture's three 2-process launches
def test_sharded_resume_reaches_the_uninterrupted_runs_weights(resumed, job):
    from safetensors.torch import load_file

    assert "actor and critic sharded by FSDP2" in resumed["c"]["log"]
    assert f"resuming from {resumed['out_b'] / 'step-2'} at step 2" in resumed["c"]["log"]
    a, c = _final_params(resumed["a"]), _final_params(resumed["c"])
    assert a.keys() == c.keys() and any(k.startswith("critic.") for k in a) and any(k.startswith("policy.") for k in a)
    worst = max((float((a[k] - c[k]).abs().max()), k) for k in a)
    assert worst[0] <= WEIGHT_ATOL, worst
    initial = load_file(str(job["zoo"]["llama-instruct"] / "model.safetensors"))
    moved = max(float((a[f"policy.{k}"] - v.float()).abs().max()) for k, v in initial.items())
    assert moved > 100 * WEIGHT_ATOL, moved
    # the steps after the resume did what the uninterrupted run did at those steps
    history = {name: {h["step"]: h for h in json.loads((out / "step-4/trainer_state.json").read_text())["log_history"]}
               for name, out in (("a", resumed["out_a"]), ("c", resumed["out_b"]))}
    assert sorted(history["c"]) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("policy/loss", "critic/loss", "diag/reward_mean"):
            assert history["c"][step][key] == pytest.approx(history["a"][step][key], rel=METRIC_RTOL, abs=1e-6)
    # final/ is the exported policy alone (fp32 here: a CPU run computes in fp32)
    final = resumed["out_b"] / "final"
    assert sorted(p.name for p in final.iterdir() if p.is_dir()) == []
    assert json.loads((final / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first one runs the module fixture's three 2-process launches
def test_each_rank_writes_its_own_shard_of_the_training_state(resumed):
    from torch.distributed.checkpoint import FileSystemReader

    for out, step in ((resumed["out_b"], 2), (resumed["out_a"], 4)):
        state = out / f"step-{step}" / "training_state"
        files = sorted(p.name for p in state.iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"], files
        assert not list(out.rglob("optimizer.pt"))
        sizes = [(state / f"__{r}_0.distcp").stat().st_size for r in (0, 1)]
        assert min(sizes) > 0.35 * sum(sizes), sizes  # halves of the state, not one rank's whole copy
        meta = FileSystemReader(str(state)).read_metadata()
        files_of: dict[str, set[str]] = {}
        for index, info in meta.storage_data.items():
            files_of.setdefault(index.fqn, set()).add(info.relative_path)
        moments = [k for k in meta.state_dict_metadata if k.startswith("optim.state.") and k.endswith(".exp_avg")]
        assert len(moments) > 20, moments[:3]
        for key in moments:
            md = meta.state_dict_metadata[key]
            rows = md.size[0]
            if rows < 2:
                continue
            # FSDP2 shards dim 0: rank 0 holds the first ceil(rows / 2) rows, rank 1 the rest, each in its own file
            assert files_of[key] == {"__0_0.distcp", "__1_0.distcp"}, (key, files_of[key])
            assert sorted(chunk.sizes[0] for chunk in md.chunks) == sorted([rows // 2, rows - rows // 2]), key


# ----------------------------------------------------------------------------- a start without full copies


def _train_one_rank(rank: int, world: int, port: int, work: str, policy: str) -> None:
    """One process of the spawned 2-process job: record what FSDP2 is given to shard, then train one step."""
    work_path = Path(work)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "ACCELERATE_USE_CPU": "true", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                       "OMP_NUM_THREADS": "1", "RLMT_RANK_REPORT_DIR": str(work_path / "reports"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{work_path / 'mlruns.db'}"})
    import torch.distributed as dist
    import torch.distributed.fsdp as fsdp

    from rlmt.config import PPOConfig
    from rlmt.train.ppo import train_ppo

    given: list[dict] = []
    real_fully_shard = fsdp.fully_shard

    def recording_fully_shard(module, *args, **kwargs):
        given.append({"module": type(module).__name__,
                      "devices": sorted({p.device.type for p in module.parameters()})})
        return real_fully_shard(module, *args, **kwargs)

    fsdp.fully_shard = recording_fully_shard
    settings = PPOConfig.model_validate({
        "learning_rate": 0.0, "critic_lr": 0.0, "prompts_per_step": 2, "mini_batch_size": 2, "micro_batch_size": 1,
        "max_steps": 1, "val_prompts": 0, "process_group_timeout_min": 37, "checkpoints": {"save_steps": 1},
        "rollout": {"max_prompt_length": 128, "max_completion_length": 4}})
    train_ppo(policy, LetterShareReward(WARM_NOTHINK), work_path / "train.parquet", None, work_path / "out", settings)
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    (work_path / f"rank{rank}.json").write_text(json.dumps(
        {"given_to_fully_shard": given, "timeout_s": backend.options._timeout.total_seconds()}))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sharded_start_builds_empty_modules_and_fills_them_from_the_main_process(tiny_zoo, tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    write_prompts(tmp_path / "train.parquet", 4)
    policy = tiny_zoo["llama-instruct"]
    spawned = mp.start_processes(_train_one_rank, args=(2, free_port(), str(tmp_path), str(policy)), nprocs=2,
                               start_method="spawn", join=False)
    deadline = time.monotonic() + 600  # a hang guard: the job takes about a minute on 2 idle cores
    try:
        while not spawned.join(timeout=5):  # raises when a process failed (with its traceback)
            assert time.monotonic() < deadline, "the 2-process job ran past 600 s"
    finally:
        for proc in spawned.processes:  # a failed check leaves no process running
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=60)
    initial = {k: v.float() for k, v in load_file(str(policy / "model.safetensors")).items()}
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        given = seen["given_to_fully_shard"]
        # 4 layers each in policy and critic, then the two roots
        assert len(given) == 10 and {g["module"] for g in given} >= {"LlamaDecoderLayer", "LlamaForCausalLM"}, given
        assert all(g["devices"] == ["meta"] for g in given), given
        assert seen["timeout_s"] == 37 * 60
        # the sharded weights as gathered after one step at learning rate 0: exactly the initial policy,
        # the critic's body a copy of the policy's body, its value head zero
        params = load_file(str(tmp_path / "reports" / f"ppo-rank{rank}.safetensors"))
        for name, value in initial.items():
            assert torch.equal(params[f"policy.{name}"], value), name
            if name.startswith("model."):
                assert torch.equal(params[f"critic.body.{name[len('model.'):]}"], value), name
        assert not params["critic.value_head.weight"].any() and not params["critic.value_head.bias"].any()
        assert len(params) == len(initial) + (len(initial) - 1) + 2  # policy, critic body (no lm_head), head
    state = tmp_path / "out" / "step-1" / "training_state"
    assert sorted(p.name for p in state.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


# ----------------------------------------------------------------------------- one process: export dtype, safety


@pytest.mark.slow
def test_a_bf16_run_exports_its_policy_in_bf16(tiny_zoo, tmp_path):
    """bf16 on (autocast over fp32 master weights, on CPU here): step-1's and final/'s policy are bf16 and
    equal the fp32 master weights of the training state rounded to bf16."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from rlmt.config import PPOConfig
    from rlmt.train.ppo import train_ppo

    from accelerate.state import AcceleratorState

    # an fp32 PPO run earlier in this process fixed accelerate's process-wide mixed precision: start afresh, as the
    # job's own process does
    AcceleratorState._reset_state(True)
    write_prompts(tmp_path / "train.parquet", 4)
    settings = PPOConfig(learning_rate=1e-3, critic_lr=1e-3, prompts_per_step=2, mini_batch_size=2,
                         micro_batch_size=2, max_steps=1, val_prompts=0, bf16=True, checkpoints={"save_steps": 1},
                         rollout={"max_prompt_length": 128, "max_completion_length": 4})
    try:
        final = train_ppo(tiny_zoo["llama-instruct"], LetterShareReward(WARM_NOTHINK), tmp_path / "train.parquet", None,
                          tmp_path / "out", settings)
    finally:
        AcceleratorState._reset_state(True)  # leave no bf16 state to the tests after this one
    exported = load_file(str(final / "model.safetensors"))
    assert {v.dtype for v in exported.values()} == {torch.bfloat16}
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    masters = {f"model.policy.{k}": torch.empty(v.shape, dtype=torch.float32) for k, v in exported.items()}
    dcp.load(masters, checkpoint_id=str(tmp_path / "out" / "step-1" / "training_state"))
    for key, value in exported.items():
        assert torch.equal(value, masters[f"model.policy.{key}"].to(torch.bfloat16)), key


class _Planted:
    """Unpickling this runs ``os.system``: what a doctored checkpoint index could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_doctored_checkpoint_index_is_refused_before_it_runs_anything(tmp_path, monkeypatch):
    from torch.distributed.checkpoint.api import CheckpointException

    from rlmt.train.ppo_checkpoint import load_training_state, save_training_state

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # AdamW's first step sets it
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path / "state", model, optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    # the written state reads back (the positive control)
    other = torch.nn.Linear(4, 3)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=0.1)
    load_training_state(tmp_path / "state", other, other_optimizer)
    assert all(torch.equal(other.state_dict()[k], saved[k]) for k in saved)
    assert torch.equal(other_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    # ... but not once its index holds something else
    marker = tmp_path / "ran"
    (tmp_path / "state" / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointException, match=r"metadata refers to (posix|os)\.system"):
        load_training_state(tmp_path / "state", other, other_optimizer)
    assert not marker.exists()
    # ... nor once one of its non-tensor values (here the learning rate) does
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    optim_state["param_groups"][0]["lr"] = _Planted(marker)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp_path / "planted-value"))
    with pytest.raises(CheckpointException, match="weights_only"):
        load_training_state(tmp_path / "planted-value", other, other_optimizer)
    assert not marker.exists()
