"""Checkpoint layout: complete vs incomplete dirs, keep-last-N, select_step, an atomic final/."""

from __future__ import annotations

import json

import pytest

from rlmt.thinking import LONGCOT_FILE, WARM_NOTHINK, WARM_THINK
from rlmt.train import checkpoints as ckpt


def _staged(out, step, val=None):
    staging = out / f"checkpoint-{step}"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"w" * step)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (staging / name).write_text("{}")
    return ckpt.finalize_checkpoint(staging, out, step, WARM_THINK, val)


def test_only_finalized_checkpoints_count_and_crash_leftovers_are_removed(tmp_path):
    _staged(tmp_path, 2)
    _staged(tmp_path, 4)
    (tmp_path / "checkpoint-6").mkdir()           # the Trainer was killed while writing step 6
    (tmp_path / "step-8").mkdir()                 # a step dir without metadata is not complete
    (tmp_path / "final.tmp").mkdir()
    assert list(ckpt.completed_steps(tmp_path)) == [2, 4]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-4"
    removed = sorted(p.name for p in ckpt.discard_incomplete(tmp_path))
    assert removed == ["checkpoint-6", "final.tmp", "step-8"]
    assert json.loads((tmp_path / "step-4" / LONGCOT_FILE).read_text())["longcot_delimiter"] == "</think>"


def test_prune_keeps_last_n_and_protected(tmp_path):
    for s, v in ((1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2)):
        _staged(tmp_path, s, v)
    assert ckpt.protected_steps(tmp_path, "best_val_reward") == {2}
    gone = ckpt.prune(tmp_path, 1, ckpt.protected_steps(tmp_path, "best_val_reward"))
    assert sorted(p.name for p in gone) == ["step-1", "step-3"]
    assert list(ckpt.completed_steps(tmp_path)) == [2, 4]
    assert ckpt.prune(tmp_path, None) == []


def test_select_step_rules(tmp_path):
    for s, v in ((45, 0.1), (90, 0.7), (135, 0.7), (180, None)):
        _staged(tmp_path, s, v)
    assert ckpt.select_step(tmp_path, "last") == 180
    assert ckpt.select_step(tmp_path, "best_val_reward") == 90  # ties go to the earlier step
    assert ckpt.select_step(tmp_path, 135) == 135
    with pytest.raises(ckpt.CheckpointError, match=r"select_step 100 is not a saved checkpoint; saved steps: \[45, 90, 135, 180\]"):
        ckpt.select_step(tmp_path, 100)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.select_step(tmp_path / "empty", "last")


def test_write_final_is_a_clean_model_dir_and_replaces_atomically(tmp_path):
    _staged(tmp_path, 3, 0.4)
    _staged(tmp_path, 6, 0.2)
    final = ckpt.write_final(tmp_path, 3, WARM_THINK, "best_val_reward")
    assert sorted(p.name for p in final.iterdir()) == [LONGCOT_FILE, "model.safetensors", "selected.json"]
    assert json.loads((final / "selected.json").read_text())["step"] == 3
    final = ckpt.write_final(tmp_path, 6, WARM_NOTHINK, "last")  # a rerun replaces it; nothink has no config
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors", "selected.json"]
    assert (final / "model.safetensors").read_bytes() == b"w" * 6
    assert not (tmp_path / "final.tmp").exists() and not (tmp_path / "final.old").exists()
