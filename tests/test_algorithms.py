"""rlmt.algorithms: one owner per algorithm (settings, step count, batch geometry, sharding, the models a job holds).

Expected step counts and geometry verdicts are worked by hand in the comments, from the counting
rules the trainers follow (TRL 1.16's GRPO sampler, rlmt's PPO loop), not from the code under test.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rlmt import algorithms
from rlmt.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 7544  # the shipped WildChat-IF train split (PAPER.md §3)


# ---------------------------------------------------------------------------------- the registry


def test_registry_holds_the_four_algorithms_with_their_facts():
    assert [a.name for a in algorithms.registered()] == ["sft", "grpo", "ppo", "dpo"]
    assert algorithms.cell_algorithms() == ("grpo", "ppo", "dpo")  # SFT is the warm-start stage, not a cell's algo
    sft, grpo, ppo, dpo = (algorithms.get(n) for n in ("sft", "grpo", "ppo", "dpo"))
    assert (sft.settings, grpo.settings, ppo.settings, dpo.settings) == (SFTConfig, GRPOConfig, PPOConfig, DPOConfig)
    assert [a.stage_label for a in (sft, grpo, ppo, dpo)] == ["+ SFT", "+ GRPO", "+ PPO", "+ DPO"]

    # what a training job holds beside the policy
    assert (grpo.rollout, ppo.rollout, dpo.rollout, sft.rollout) == (True, True, False, False)
    assert (grpo.critic, ppo.critic, dpo.critic) == (False, True, False)
    assert (grpo.reward_model_in_training, ppo.reward_model_in_training, dpo.reward_model_in_training) == \
        (True, True, False)  # DPO's pairs are scored before its training job
    assert grpo.reference_model(GRPOConfig()) and not grpo.reference_model(GRPOConfig(beta=0))  # default beta 0.001
    assert not ppo.reference_model(PPOConfig()) and ppo.reference_model(PPOConfig(kl_coef=0.05))  # default kl_coef 0
    assert dpo.reference_model(DPOConfig()) and not sft.reference_model(SFTConfig())
    assert (grpo.validates_on_mixture_val, ppo.validates_on_mixture_val, dpo.validates_on_mixture_val) == \
        (True, True, False)  # DPO validates on its own split of the pairs

    with pytest.raises(KeyError, match="unknown algorithm 'reinforce'"):
        algorithms.get("reinforce")
    with pytest.raises(ValueError, match="already registered"):
        algorithms.register(grpo)


def test_supported_sharding():
    ppo, grpo = algorithms.get("ppo"), algorithms.get("grpo")
    assert ppo.supported_sharding == {"single", "ddp", "fsdp2"}  # rlmt's own loop: no DeepSpeed engine, FSDP2 only
    assert not ppo.supports("zero3") and not ppo.supports("fsdp") and ppo.supports("fsdp2")
    for name in ("sft", "grpo", "dpo"):
        assert algorithms.get(name).supported_sharding == {"single", "ddp", "zero2", "zero3", "fsdp"}
    assert grpo.supports("fsdp2")  # 'fsdp' covers FSDP version 2 for TRL's trainers


def test_config_builds_its_blocks_from_the_registry_and_keeps_exporting_the_classes():
    import rlmt.config as config
    from rlmt.algorithms import dpo, grpo, ppo, sft

    assert (config.SFTConfig, config.GRPOConfig, config.PPOConfig, config.DPOConfig) == \
        (sft.SFTConfig, grpo.GRPOConfig, ppo.PPOConfig, dpo.DPOConfig)
    assert list(config.AlgorithmSettings.model_fields) == ["sft", "grpo", "ppo", "dpo"]
    assert list(config.Override.model_fields) == ["match", "sft", "grpo", "ppo", "dpo", "note"]
    assert config.ALGORITHMS == ("grpo", "ppo", "dpo")


def test_the_package_imports_nothing_heavy_and_not_the_config():
    code = ("import sys, rlmt.algorithms; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl') "
            "or m == 'rlmt.config'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- step counts


def test_grpo_step_count_by_hand():
    grpo = algorithms.get("grpo")
    # 128 prompts per rollout, updates of 64: 7544 // 128 = 58 rollouts/epoch (TRL drops the last 120 prompts),
    # 2 updates each = 116 per epoch, x 2 epochs = 232 updates; select_step 135 with the default stop ends it there
    s = GRPOConfig(prompts_per_step=128, prompts_per_update=64, num_train_epochs=2,
                   checkpoints={"save_steps": 45, "select_step": 135})
    assert grpo.total_steps(s, N_PROMPTS) == 135
    sched = grpo.schedule(s, N_PROMPTS)
    assert (sched.total_steps, sched.saved_steps, sched.rollouts) == (135, [45, 90, 135], 68)  # ceil(135 / 2) = 68
    assert sched.detail.endswith("= 232 updates; stops at select_step 135")

    # without the stop: 232 updates, saves every 45 and the last; 116 rollouts
    s = s.model_copy(update={"checkpoints": s.checkpoints.model_copy(update={"stop_at_select_step": False})})
    sched = grpo.schedule(s, N_PROMPTS)
    assert (sched.total_steps, sched.saved_steps, sched.rollouts) == (232, [45, 90, 135, 180, 225, 232], 116)

    # max_steps wins over epochs: 10 updates of one rollout each (prompts_per_update unset)
    assert grpo.total_steps(GRPOConfig(max_steps=10), N_PROMPTS) == 10


def test_ppo_step_count_by_hand():
    ppo = algorithms.get("ppo")
    # ceil(2 epochs x 7544 / 64) = ceil(235.75) = 236 steps, one rollout each; saves every 55 and the last
    sched = ppo.schedule(PPOConfig(), N_PROMPTS)
    assert (sched.total_steps, sched.saved_steps, sched.rollouts) == (236, [55, 110, 165, 220, 236], 236)
    assert ppo.total_steps(PPOConfig(), 10) == 1  # ceil(20 / 64) = 1
    assert ppo.total_steps(PPOConfig(checkpoints={"save_steps": 55, "select_step": 110}), N_PROMPTS) == 110


def test_the_ppo_trainer_counts_its_steps_and_checks_its_batch_by_the_registry():
    from rlmt.train.ppo import _check_geometry, _total_steps
    from rlmt.train.runtime import TrainingSetupError

    assert _total_steps(PPOConfig(), N_PROMPTS) == 236  # as worked above
    assert _total_steps(PPOConfig(checkpoints={"save_steps": 55, "select_step": 110}), N_PROMPTS) == 110
    _check_geometry(PPOConfig(prompts_per_step=64, mini_batch_size=16), 8)  # 64/8 and 16/8 split, 16 <= 64
    with pytest.raises(TrainingSetupError, match=r"algorithms\.ppo\.mini_batch_size: mini_batch_size \(64\) exceeds "
                                                 r"prompts_per_step \(32\)"):
        _check_geometry(PPOConfig(prompts_per_step=32, mini_batch_size=64), 8)


def test_dpo_and_sft_have_no_step_count_before_their_data():
    dpo = algorithms.get("dpo")
    assert dpo.total_steps(DPOConfig(), N_PROMPTS) is None and dpo.schedule(DPOConfig(), N_PROMPTS) is None
    assert algorithms.get("sft").total_steps(SFTConfig(), N_PROMPTS) is None
    problem = dpo.select_step_problem(DPOConfig(checkpoints={"save_steps": 100, "select_step": 300}), N_PROMPTS)
    assert problem == ("300: DPO's number of steps depends on the pairs that survive the filters, so a fixed step "
                       "may never exist; use 'last' or 'best_val_reward'")


def test_select_step_problem_by_hand():
    grpo = algorithms.get("grpo")
    # 64 prompts, one update per rollout: 7544 // 64 = 117 rollouts/epoch x 2 = 234 updates; 135 = 3 x 45 is saved
    s = GRPOConfig(checkpoints={"save_steps": 45, "select_step": 135, "stop_at_select_step": False})
    assert grpo.select_step_problem(s, N_PROMPTS) is None
    # 128 prompts, one update per rollout: 58 x 2 = 116 updates, so step 135 never exists
    s = s.model_copy(update={"prompts_per_step": 128})
    assert grpo.select_step_problem(s, N_PROMPTS).startswith("135 is never saved: the run saves steps [45, 90, 116]")
    assert grpo.select_step_problem(s, None) is None  # no prompt count: nothing to check
    assert grpo.select_step_problem(GRPOConfig(), N_PROMPTS) is None  # 'last'


# ---------------------------------------------------------------------------------- batch geometry


@pytest.mark.parametrize("algo, settings, world, want", [
    # PPO: the reference geometry, 64 prompts and mini-batches of 16 over 8 GPUs (8 and 2 per GPU)
    ("ppo", PPOConfig(prompts_per_step=64, mini_batch_size=16), 8, None),
    # 60 prompts do not split over 8 processes (60 = 7 x 8 + 4)
    ("ppo", PPOConfig(prompts_per_step=60, mini_batch_size=60), 8, "algorithms.ppo.mini_batch_size"),
    # both split over 8 (32 = 4 x 8, 64 = 8 x 8), but a mini-batch of 64 responses from a step of 32 prompts
    # (one response each) cannot exist: the check the preflight lacked before rlmt.algorithms
    ("ppo", PPOConfig(prompts_per_step=32, mini_batch_size=64), 8, "algorithms.ppo.mini_batch_size"),
    # GRPO: 64 prompts x 8 completions = 512 per update, micro-batches of 8 on 8 GPUs = 64: 512 = 8 x 64
    ("grpo", GRPOConfig(prompts_per_step=64, prompts_per_update=64, per_device_train_batch_size=8), 8, None),
    # micro-batches of 3 on 8 GPUs = 24: 512 = 21 x 24 + 8
    ("grpo", GRPOConfig(per_device_train_batch_size=3), 8, "algorithms.grpo.prompts_per_update"),
    # DPO: 128 pairs = 16 x (1 per device x 8); 100 = 12 x 8 + 4
    ("dpo", DPOConfig(global_batch_size=128, per_device_train_batch_size=1), 8, None),
    ("dpo", DPOConfig(global_batch_size=100, per_device_train_batch_size=1), 8, "algorithms.dpo.global_batch_size"),
    # SFT: 16 = 1 x (2 per device x 8); on 3 processes 2 x 3 = 6 and 16 = 2 x 6 + 4
    ("sft", SFTConfig(global_batch_size=16, per_device_train_batch_size=2), 8, None),
    ("sft", SFTConfig(global_batch_size=16, per_device_train_batch_size=2), 3, "algorithms.sft.global_batch_size"),
])
def test_geometry_by_hand(algo, settings, world, want):
    problem = algorithms.get(algo).geometry_problem(settings, world)
    assert (problem[0] if problem else None) == want


def test_preflight_blocks_a_ppo_mini_batch_larger_than_the_step(tmp_path, paper_judge_key):
    from rlmt.preflight import run

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw = copy.deepcopy(raw)
    # paper.yaml's PPO runs on 8 GPUs (resources.train_ppo): 64 and 128 both split over 8, but 128 > 64
    raw["algorithms"]["ppo"].update(prompts_per_step=64, mini_batch_size=128)
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    report = run(path, root=ROOT)
    ppo_blockers = [f for f in report.blockers if f.cell.startswith("ppo__")]
    assert ppo_blockers and {f.key for f in ppo_blockers} == {"algorithms.ppo.mini_batch_size"}
    assert "mini_batch_size (128) exceeds prompts_per_step (64)" in ppo_blockers[0].message
    assert not [f for f in report.blockers if not f.cell.startswith("ppo__")]


# ---------------------------------------------------------------------------------- a new algorithm


TOY = textwrap.dedent('''
    """A toy algorithm: its own module's content and one registry entry, nothing else."""
    import sys

    from pydantic import Field

    from rlmt import algorithms
    from rlmt.algorithms.base import Algorithm
    from rlmt.algorithms.schedule import build_schedule
    from rlmt.algorithms.settings import CheckpointConfig, Strict


    class ToyConfig(Strict):
        prompts_per_step: int = 4
        checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)


    def geometry_problem(s, world):
        if s.prompts_per_step % world:
            return ("algorithms.toy.prompts_per_step", f"{s.prompts_per_step} prompts do not split over {world}")
        return None


    def schedule(s, n_train):
        return build_schedule("toy", n_train // s.prompts_per_step, "one step per rollout", s.checkpoints,
                              rollouts_for=lambda steps: steps)


    algorithms.register(Algorithm(name="toy", title="Toy", settings=ToyConfig,
                                  supported_sharding=frozenset({"single", "ddp"}), geometry_problem=geometry_problem,
                                  total_steps=lambda s, n: schedule(s, n).total_steps, schedule=schedule))

    from rlmt.preflight import run  # after the registration, as a built-in module's import would be

    for path in sys.argv[2:]:
        for f in run(path, root=sys.argv[1]).findings:
            if f.check in ("launcher", "schedule"):
                print(path.rsplit("/", 1)[-1], f.check, f.level, f.key, f.message, sep="|")
''')


def test_a_registered_toy_algorithm_is_checked_by_the_preflight(tmp_path):
    """No edit to config, preflight or workflow: the grid takes 'toy', the preflight checks its sharding,
    geometry and schedule from its registry entry."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["grid"] = [{"algo": ["toy"], "base": ["llama-base"], "start": ["zero"], "think": [False], "rm": ["tiny-rm"],
                     "mixture": ["demo"]}]  # demo: n_train 80
    # 2 processes (plain DDP, no GPU); 3 prompts per step do not split over 2; select_step 5 without the stop:
    # 80 // 3 = 26 steps saved at 2, 4, ..., 26, so step 5 never exists
    base["algorithms"]["toy"] = {"prompts_per_step": 3,
                                 "checkpoints": {"save_steps": 2, "select_step": 5, "stop_at_select_step": False}}
    base["resources"]["train_toy"] = {"gpus": 0, "nodes": 2}
    configs = {"odd.yaml": base}
    # an override of the toy block: 4 prompts split over 2; 80 // 4 = 20 steps; select_step 5 with the stop: [2, 4, 5]
    fixed = copy.deepcopy(base)
    fixed["overrides"] = [{"match": {"base": "llama-base"},
                           "toy": {"prompts_per_step": 4, "checkpoints": {"stop_at_select_step": True}}}]
    configs["fixed.yaml"] = fixed
    zero3 = copy.deepcopy(fixed)  # DeepSpeed, which the toy does not list
    zero3["resources"]["train_toy"] = {"gpus": 0, "nodes": 2, "launcher": "accelerate",
                                       "accelerate_config": "config/accelerate/zero3.yaml"}
    configs["zero3.yaml"] = zero3
    for name, raw in configs.items():
        (tmp_path / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "toy.py").write_text(TOY)
    out = subprocess.run([sys.executable, str(tmp_path / "toy.py"), str(ROOT), *(str(tmp_path / n) for n in configs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("|") for line in out.stdout.splitlines()]
    got = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    assert got[("odd.yaml", "launcher")] == ("BLOCKER", "algorithms.toy.prompts_per_step",
                                             "toy on 2 processes: 3 prompts do not split over 2")
    assert got[("odd.yaml", "schedule")][:2] == ("BLOCKER", "algorithms.toy.checkpoints.select_step")
    assert got[("odd.yaml", "schedule")][2] == ("algorithms.toy.checkpoints.select_step: 5 is never saved: the run "
                                                "saves steps [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26] "
                                                "(one step per rollout)")
    assert got[("fixed.yaml", "launcher")] == ("ok", "resources.train_toy.accelerate_config",
                                               "toy: ddp on 2 process(es)")
    assert got[("fixed.yaml", "schedule")][0] == "ok" and "stops at select_step 5" in got[("fixed.yaml", "schedule")][2]
    assert got[("zero3.yaml", "launcher")][:2] == ("BLOCKER", "resources.train_toy.accelerate_config")
    assert "toy does not run under zero3" in got[("zero3.yaml", "launcher")][2]
