"""DPO's pair sampling on every process (issue 28, defect 9): two gloo processes build the pairs one builds.

The 2-process job is a real ``rlmt launch`` -> ``accelerate launch`` (gloo, CPU) -> ``rlmt train dpo``
with the inputs and helpers of ``test_multiprocess_trainers``; the one-process reference builds its
pairs in this process from the same config. Each rank samples half of the 8 prompts
(``rows[rank::2]``), scores them, and the main process merges and pairs: the merged samples and the
pairs must equal the one-process ones (texts exactly; reward-model scores within 1e-5 relative, as a
prompt's scores come from batches of other lengths on the two runs).
"""

from __future__ import annotations

import json

import pytest
from test_multiprocess_trainers import CELL, N_PROMPTS, SAMPLES_PER_PROMPT, check_job, job, launch  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SCORE_RTOL = 1e-5


def one_process_pairs(job, out):
    """The pairs of one process: the same config, policy, reward model and prompts as the launched job."""
    from rlmt.config import load_config
    from rlmt.rewards import NamedReward
    from rlmt.train.dpo import prepare_pairs

    cfg = load_config(job["config"])
    [cell] = [c for c in cfg.cells() if c.name == CELL.format(algo="dpo")]
    reward = NamedReward(cell.rm, cfg.reward_models, {cell.rm: job["zoo"]["reward"]})  # what `rlmt train dpo` passes
    return prepare_pairs(job["zoo"]["llama-instruct"], reward, job["work"] / "train.parquet", out,
                         cfg.settings("dpo", cell), backend=cfg.generation.backend, device="cpu")


def test_dpo_pairs_sampled_on_two_processes_equal_one_processs(job):
    import polars as pl

    one = job["work"] / "dpo-one"
    pairs_one = one_process_pairs(job, one)
    two = job["work"] / "dpo-two"
    result = launch(job, "dpo-two", "ddp.yaml",
                    ["dpo", "--cell", CELL.format(algo="dpo"), "--policy", str(job["zoo"]["llama-instruct"]),
                     "--reward-model", str(job["zoo"]["reward"]), "--train", str(job["work"] / "train.parquet"),
                     "--out", str(two)])
    check_job(result, "dpo", two / "final")

    # both processes sampled: half of the 8 prompts each, not all 8 on the main process
    stats_two = json.loads((two / "pairs" / "stats.json").read_text())
    assert stats_two["sampling"] == {"processes": 2, "prompts_per_process": [N_PROMPTS // 2, N_PROMPTS // 2]}
    stats_one = json.loads((pairs_one / "stats.json").read_text())
    assert stats_one["sampling"] == {"processes": 1, "prompts_per_process": [N_PROMPTS]}
    assert stats_two["counts"] == stats_one["counts"]
    assert not (two / "dpo_samples.parts").exists()  # the shares are merged, then removed

    # the merged samples: the same rows in the same order (prompt file order, then sample index)
    def samples(out):
        return [json.loads(line) for line in (out / "dpo_samples.jsonl").read_text().splitlines() if line.strip()]

    s1, s2 = samples(one), samples(two)
    assert len(s1) == N_PROMPTS * SAMPLES_PER_PROMPT
    assert [(r["id"], r["sample"], r["output"]) for r in s2] == [(r["id"], r["sample"], r["output"]) for r in s1]
    assert [r["reward"] for r in s2] == pytest.approx([r["reward"] for r in s1], rel=SCORE_RTOL)
    assert len({r["output"] for r in s1}) > N_PROMPTS  # samples of one prompt differ: a real sampling, not one text

    # the pairs: the same chosen and rejected texts for the same prompts, in the same order
    for split in ("train", "val"):
        p1, p2 = pl.read_parquet(pairs_one / f"{split}.parquet"), pl.read_parquet(two / "pairs" / f"{split}.parquet")
        assert p1.height == p2.height
        if p1.height:
            cols = ["id", "prompt", "chosen", "rejected"]
            assert p2.select(cols).to_dicts() == p1.select(cols).to_dicts()
            for col in ("chosen_score", "rejected_score"):
                assert p2[col].to_list() == pytest.approx(p1[col].to_list(), rel=SCORE_RTOL)
    assert pl.read_parquet(pairs_one / "train.parquet").height >= 2
