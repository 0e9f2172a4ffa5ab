"""The experiment plan and the Snakemake DAG (dry runs; the real run is in test_e2e.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlmt.config import load_config
from rlmt.workflow import Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> Plan:
    return Plan(load_config(ROOT / "config/paper.yaml"))


@pytest.fixture(scope="module")
def default() -> Plan:
    return Plan(load_config(ROOT / "config/config.yaml"))


def _job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_policy_names_round_trip(paper):
    for cell in paper.cells:
        parsed = paper.parse_policy(cell.policy_name)
        assert parsed["base"] == cell.base and parsed["start"] == cell.start and parsed["think"] == cell.think


def test_rlmt_config_cells_lists_the_grid_as_the_readme_says():
    """`rlmt config cells` (README), in the checkout: the default grid's cells; `-c config/paper.yaml` the paper's."""
    rlmt = [str(Path(sys.executable).parent / "rlmt"), "config", "cells"]
    listed = subprocess.run(rlmt, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout.split()
    # config/config.yaml by hand: grpo/ppo/dpo x llama-base/qwen-base x think/nothink, warm start, tiny-rm, demo;
    # and GRPO llama-base think on the length-debiased tiny-rm-odin
    assert sorted(listed) == sorted([*(f"{algo}__{base}__warm-start__{think}__tiny-rm__demo" for algo in ("grpo", "ppo", "dpo")
                                       for base in ("llama-base", "qwen-base") for think in ("think", "nothink")),
                                     "grpo__llama-base__warm-start__think__tiny-rm-odin__demo"])
    paper = subprocess.run([*rlmt, "-c", "config/paper.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           check=True).stdout.split()
    # config/paper.yaml's grid rows by hand: GRPO 8 + 4 (zero) + 4 (RM ablation) + 2 (mixtures) + 2 (SFT teacher)
    # + 1 (OpenThinker2) + 2 (the rubric and mix rewards, an extension) = 23; PPO and DPO 8 + 4 each
    assert len(paper) == len(set(paper)) == 47
    assert sum(n.startswith("grpo__") for n in paper) == 23
    assert sum(n.startswith("ppo__") for n in paper) == sum(n.startswith("dpo__") for n in paper) == 12
    assert {"grpo__llama-base__zero__think__skywork-v1__wildchat-if", "grpo__llama-base__warm-start__think__armorm__wildchat-if",
            "grpo__llama-base__warm-start__think__skywork-v1__tulu3-random",
            "grpo__llama-base__warm-start__nothink__skywork-v1__wildchat-if__sft-gpt41-mini",
            "grpo__openthinker2__none__think__skywork-v1__wildchat-if"} <= set(paper)


def test_default_grid_covers_both_families_all_algorithms_and_thinking(default):
    combos = {(c.base.split("-")[0], c.algo, c.think) for c in default.cells}
    assert combos == {(f, a, t) for f in ("llama", "qwen") for a in ("grpo", "ppo", "dpo") for t in (True, False)}
    assert set(default.eval_models) >= set(default.cell_names)


def test_settings_digest_changes_only_for_matching_cells(paper):
    cells = paper.cells
    before = {c.name: paper.settings_digest(c.algo, c) for c in cells}
    cfg = paper.cfg.model_copy(deep=True)
    cfg.overrides[0].grpo["learning_rate"] = 5e-7  # the instruct-model override
    after = {c.name: Plan(cfg).settings_digest(c.algo, c) for c in cells}
    changed = {n for n in before if before[n] != after[n]}
    # By hand from config/paper.yaml: the override matches base llama-instruct or qwen-instruct, and the grid has
    # GRPO on both, warm start, think and no-think, skywork-v1, wildchat-if (Table 1's row); PPO and DPO cells on
    # the same bases keep their digests (their own settings did not change).
    assert changed == {f"grpo__{base}__warm-start__{think}__skywork-v1__wildchat-if"
                       for base in ("llama-instruct", "qwen-instruct") for think in ("think", "nothink")}


KEYS = {"OPENAI_API_KEY": "test-not-a-key", "GEMINI_API_KEY": "test-not-a-key"}


def test_paper_grid_dry_run_plans_every_training_cell(tmp_path):
    """From another directory with `-d` (a user's results elsewhere): the config's relative accelerate configs
    still resolve (against the workflow's source tree), in the preflight and in every launcher command."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path / "work"), f"--configfile={ROOT / 'config/paper.yaml'}", "all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, **KEYS})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    configs = set(re.findall(r"--config_file (\S+)", proc.stdout))
    assert configs == {str(ROOT / "config/accelerate/zero3.yaml"), str(ROOT / "config/accelerate/fsdp2.yaml")}
    assert set(re.findall(r"--deepspeed_config_file (\S+)", proc.stdout)) == {str(ROOT / "config/deepspeed/zero3.json")}
    counts = _job_counts(proc.stdout)
    assert counts["train"] >= 40
    assert counts["judge"] > 0 and counts["generate"] >= counts["train"]
    assert counts["report"] == 1


def test_a_preflight_blocker_stops_snakemake_before_any_job(tmp_path):
    """The preflight gate runs while Snakemake reads the Snakefile: a blocker fails even a dry run, names the cell
    and the key, and leaves no marker that would let a training job start."""
    import yaml

    raw = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    raw["resources"]["train_ppo"]["accelerate_config"] = "config/accelerate/zero3.yaml"  # PPO never runs under it
    (tmp_path / "blocked.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                           f"--configfile={tmp_path / 'blocked.yaml'}", "all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **KEYS})
    said = proc.stdout + proc.stderr  # Snakemake logs a WorkflowError on stdout
    assert proc.returncode != 0
    assert "BLOCKER cell=ppo__llama-base__warm-start__think__skywork-v1__wildchat-if " \
           "key=resources.train_ppo.accelerate_config: ppo does not run under zero3" in said, said[-3000:]
    assert "Job stats:" not in said
    assert not (tmp_path / "results/.rlmt/preflight.ok").exists()
    assert "BLOCKER" in (tmp_path / "results/logs/preflight.log").read_text()


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_lint_is_clean(configfile):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", f"--configfile={configfile}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **KEYS})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Congratulations" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- cluster resources


CLUSTER_RULES = ["prepare_model", "curate", "sft_data", "sft", "train", "generate", "score_winrate", "judge"]


def test_every_cluster_rule_gets_every_resource_key_of_its_config_entry(paper):
    """curate/prepare/sft_data/judge get their CPU partition and CPUs (not only memory and runtime)."""
    res = paper.cfg.resources
    for rule, entry in [("curate", "curate"), ("prepare_model", "prepare"), ("sft_data", "sft_data"),
                        ("judge", "judge"), ("generate", "generate")]:
        job = paper.job_resources(rule)
        want = res[entry]
        assert (job["slurm_partition"], job["cpus_per_task"], job["mem_mb"], job["runtime"]) == (
            want.slurm_partition, want.cpus_per_task, want.mem_mb, want.runtime), rule
        assert paper.job_threads(rule) == want.cpus_per_task
    assert paper.job_resources("curate")["slurm_partition"] == "cpu" and "gpu" not in paper.job_resources("curate")


def test_score_winrate_loads_its_reward_model_on_a_gpu(paper):
    job = paper.job_resources("score_winrate")
    assert job["gpu"] >= 1 and job["slurm_partition"] == paper.cfg.resources["generate"].slurm_partition


def test_keys_without_a_value_are_left_out_never_empty(paper, default):
    for plan in (paper, default):
        for rule in CLUSTER_RULES:
            for algo in (["grpo", "ppo", "dpo"] if rule == "train" else [None]):
                job = plan.job_resources(rule, algo)
                assert all(v not in ("", None) for v in job.values()), (rule, algo, job)
                # the jobstep treats the mere presence of `mpi` as "run the command without srun"
                assert ("mpi" in job) == (job["nodes"] > 1), (rule, algo, job)
    # the embedded default names no account or partition: the profile's default-resources apply
    assert not {"slurm_account", "slurm_partition"} & set(default.resource_keys("train"))


def test_multi_node_tasks_survive_the_slurm_profile(tmp_path):
    """A 2-node cell dry-run through profiles/slurm: tasks=2 and mpi reach the job, no set-resources undo them."""
    import yaml

    from rlmt.config import load_config

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["grid"] = [{"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True],
                    "rm": ["tiny-rm"], "mixture": ["demo"]}]
    cfg["resources"]["train"] = {"gpus": 8, "nodes": 2, "cpus_per_task": 32, "mem_mb": 400000, "runtime": 600,
                                 "slurm_partition": "gpu", "launcher": "accelerate", "gpu_mem_gb": 80}
    cfg["resources"]["default"]["slurm_partition"] = "cpu"
    # 16 processes: one update of 16 prompts x 8 samples is one micro-batch of 8 on each (rlmt preflight's geometry)
    cfg["algorithms"]["grpo"].update(prompts_per_step=16, num_generations=8, per_device_train_batch_size=8)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    load_config(tmp_path / "config.yaml")
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert "set-resources" not in profile and "software-deployment-method" not in profile
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                           "--profile", str(ROOT / "profiles/slurm"), f"--configfile={tmp_path / 'config.yaml'}",
                           "results/checkpoints/grpo__llama-base__warm-start__think__tiny-rm__demo/final"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = proc.stdout.split("rule train:")[1].split("\n\n")[0]
    resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))
    assert resources["tasks"] == "2" and resources["nodes"] == "2" and resources["mpi"] == "srun"
    assert resources["gres"] == "gpu:8" and resources["slurm_partition"] == "gpu"
    assert resources["slurm_account"] == "your-account"  # the profile's default, not hidden by an empty value


def test_generation_and_judging_rerun_when_their_settings_change(paper):
    cfg = paper.cfg.model_copy(deep=True)
    cfg.generation.sampling.temperature = 0.3
    changed = Plan(cfg)
    model = paper.cell_names[0]
    assert changed.generation_digest(model, "ifeval") != paper.generation_digest(model, "ifeval")
    assert changed.settings_digest("grpo", changed.cells[0]) == paper.settings_digest("grpo", paper.cells[0])
    in_bf16 = paper.cfg.model_copy(deep=True)
    in_bf16.generation.dtype = "bfloat16"
    assert Plan(in_bf16).generation_digest(model, "ifeval") != paper.generation_digest(model, "ifeval")
    judged = paper.cfg.model_copy(deep=True)
    judge = paper.judge_name("arenahard-v2")
    judged.evaluation.judges[judge].model = "another-judge"
    assert Plan(judged).judge_digest("arenahard-v2") != paper.judge_digest("arenahard-v2")
    assert paper.judge_name("alpacaeval2") != judge
    assert Plan(judged).judge_digest("alpacaeval2") == paper.judge_digest("alpacaeval2")  # another judge: unchanged


def test_api_keys_are_declared_envvars(paper, default):
    assert paper.api_key_envs() == ["GEMINI_API_KEY", "OPENAI_API_KEY"]
    assert default.api_key_envs() == []
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile=config/paper.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "OPENAI_API_KEY" in out and "GEMINI_API_KEY" in out


def _header_commands() -> list[str]:
    lines = (ROOT / "Snakefile").read_text().splitlines()
    return [l.lstrip("#").split("  #")[0].strip() for l in lines if l.startswith("#   snakemake")]


def test_the_snakefile_header_commands_parse_as_written():
    """Snakemake's own argument parsing, from the repo root: the workflow profile supplies cores; no target is
    swallowed by --configfile; the `all` trap file is gone."""
    from snakemake.cli import parse_args

    assert not (ROOT / "all").exists()
    commands = _header_commands()
    assert len(commands) == 3
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for cmd in commands:
            cmd = cmd.replace("<cell>", "grpo__llama-base__warm-start__think__tiny-rm__demo")
            _, args = parse_args(shlex.split(cmd)[1:])
            assert args.cores == os.cpu_count(), cmd  # `cores: all` of the workflow profile
            if "--configfile" in cmd:
                assert [str(p) for p in args.configfile] == ["config/paper.yaml"] and not args.targets
                assert args.executor == "slurm" and args.keep_going
            else:
                assert args.targets and not args.configfile
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- reruns of evaluation jobs


def _judged_config(data_dir: Path, judge_url: str, *, temperature: float = 0.7, judge_model: str = "judge-x") -> dict:
    """The default config reduced to one prepared baseline judged on AlpacaEval 2 (two items) by a local server."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["data_dir"] = str(data_dir)
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k.startswith("llama")}
    cfg["grid"] = [{"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [False],
                    "rm": ["tiny-rm"], "mixture": ["demo"]}]
    cfg["generation"]["sampling"] = {"temperature": temperature, "top_p": 0.95, "max_new_tokens_think": 8,
                                     "max_new_tokens_nothink": 8}
    cfg["evaluation"].update(baselines=["llama-instruct"], evaluate_initial=False,
                             benchmarks={"alpacaeval2": {"limit": 2, "protocol": "paper"}},
                             judges={"local": {"base_url": judge_url, "model": judge_model, "api_key_env": None}})
    return cfg


@pytest.mark.slow
def test_generation_and_judging_rerun_exactly_their_jobs_after_a_real_run(tmp_path, data_dir, openai_server):
    """After a real run of one baseline's judged benchmark, Snakemake's dry run plans: for a new judge model the
    judging job alone; for a new sampling temperature the generation and the judging after it (the digests above
    are rule parameters: Snakemake compares them with the recorded run's)."""
    import json

    import yaml

    server = openai_server(lambda body: json.dumps({"reason": "r", "better": "A"}))
    target = "results/eval/llama-instruct/alpacaeval2/scores.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def snakemake(name: str, *args: str, **edits) -> subprocess.CompletedProcess:
        (tmp_path / name).write_text(yaml.safe_dump(_judged_config(data_dir, server.base_url, **edits)))
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                               f"--configfile={tmp_path / name}", "--cores", "2", *args, target],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc

    snakemake("config.yaml")
    assert json.loads((tmp_path / target).read_text())["n"] == 2
    judged = (tmp_path / target).with_name("judgments.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["ok"] for line in judged) == [True, True]  # one paper-protocol judgment per item
    sent = server.requests

    assert _job_counts(snakemake("judge.yaml", "-n", judge_model="another-judge").stdout) == {"judge": 1, "total": 1}
    assert _job_counts(snakemake("sampling.yaml", "-n", temperature=0.3).stdout) == {
        "generate": 1, "judge": 1, "total": 2}
    assert server.requests == sent  # the dry runs sent nothing
