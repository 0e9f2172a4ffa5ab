"""GRPO and DPO as a paper cell runs them on 8 x H100 (issue 28), checked on CPU.

Most tests read the TRL arguments a real cell of ``config/paper.yaml`` builds (``trl_grpo_args`` and
``trl_dpo_args`` are pure functions of the settings); the others drive the code that a GPU node runs
with the environment it would see (a GPU and no vllm; two ranks saving one checkpoint; a vLLM engine,
recorded by a stand-in ``vllm`` package because vllm itself needs a GPU). Only a GPU can show that
vLLM then starts with that context and fits its KV cache, what sleep mode gives back to the update,
and that each rank's engine really runs on that rank's GPU.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlmt.thinking import WARM_NOTHINK, format_for

ROOT = Path(__file__).resolve().parents[1]
WORLD = 8  # one node of 8 GPUs (config/paper.yaml resources.train)


@pytest.fixture(scope="module")
def paper():
    from rlmt.config import load_config

    return load_config(ROOT / "config" / "paper.yaml")


def cell_named(cfg, name: str):
    [cell] = [c for c in cfg.cells() if c.name == name]
    return cell


LLAMA_WARM = "grpo__llama-base__warm-start__think__skywork-v1__wildchat-if"
LLAMA_ZERO = "grpo__llama-base__zero__think__skywork-v1__wildchat-if"  # 4 epochs, select_step 135
QWEN_128 = "grpo__qwen-base__warm-start__nothink__skywork-v1__wildchat-if"  # 128 prompts per rollout
DPO_CELL = "dpo__llama-base__warm-start__think__skywork-v1__wildchat-if"


def grpo_args(cfg, name: str, tmp_path, *, settings=None, has_val=True):
    from rlmt.train.grpo import trl_grpo_args

    cell = cell_named(cfg, name)
    settings = settings or cfg.settings("grpo", cell)
    return trl_grpo_args(settings, tmp_path, format_for(cell.start, cell.think), has_val=has_val, use_vllm=True,
                         world=WORLD)


def with_changes(settings, **changes):
    """`settings` validated again with `changes` merged in (nested dicts merge one level)."""
    raw = settings.model_dump()
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return type(settings).model_validate(raw)


# ----------------------------------------------------------------------------- 1. vLLM's context


@pytest.mark.parametrize("name,context", [
    (LLAMA_WARM, 1024 + 4096),  # prompt limit 1,024 + completion limit 4,096 (paper.yaml grpo.rollout)
    (LLAMA_ZERO, 896 + 4096),  # zero cells: prompt limit 896 (the "start: zero" override)
])
def test_grpo_gives_vllm_the_rollouts_context_not_the_models(paper, tmp_path, name, context):
    """Llama-3.1's own context is 131,072 tokens: vLLM refuses to start unless one such sequence's KV cache fits."""
    args = grpo_args(paper, name, tmp_path)
    assert args.vllm_max_model_length == context


# ----------------------------------------------------------------------------- 3. GRPO memory: sleep mode


def test_grpo_puts_vllm_to_sleep_between_rollouts_as_configured(paper, tmp_path):
    cell = cell_named(paper, LLAMA_WARM)
    settings = paper.settings("grpo", cell)
    assert grpo_args(paper, LLAMA_WARM, tmp_path).vllm_enable_sleep_mode is True  # the paper cells (the default)
    off = with_changes(settings, rollout={"vllm_enable_sleep_mode": False})
    assert grpo_args(paper, LLAMA_WARM, tmp_path, settings=off).vllm_enable_sleep_mode is False


# ----------------------------------------------------------------------------- 4. DPO memory: checkpointing


@pytest.mark.parametrize("on", [True, False])
def test_dpo_activation_checkpointing_follows_the_setting(paper, tmp_path, on):
    from rlmt.train.dpo import trl_dpo_args

    settings = with_changes(paper.settings("dpo", cell_named(paper, DPO_CELL)), gradient_checkpointing=on)
    args = trl_dpo_args(settings, tmp_path, n_pairs=7000, has_val=True, world=WORLD)
    assert args.gradient_checkpointing is on


# ----------------------------------------------------------------------------- 5. run length and validation


def test_grpo_stops_at_the_selected_step(paper, tmp_path):
    """Zero-Llama GRPO: 4 epochs of 7,544 prompts = 117 rollouts x 4 = 468 updates, but step 135 is the one evaluated."""
    assert grpo_args(paper, LLAMA_ZERO, tmp_path).max_steps == 135
    assert grpo_args(paper, LLAMA_WARM, tmp_path).max_steps == 135
    settings = paper.settings("grpo", cell_named(paper, LLAMA_ZERO))
    # the flag off: TRL's epoch arithmetic (max_steps -1) decides, as before
    full = with_changes(settings, checkpoints={"stop_at_select_step": False})
    assert grpo_args(paper, LLAMA_ZERO, tmp_path, settings=full).max_steps == -1
    # a configured max_steps shorter than select_step wins; 'last' has nothing to stop at
    assert grpo_args(paper, LLAMA_ZERO, tmp_path, settings=with_changes(settings, max_steps=90)).max_steps == 90
    last = with_changes(settings, checkpoints={"select_step": "last"})
    assert grpo_args(paper, LLAMA_ZERO, tmp_path, settings=last).max_steps == -1


def test_grpo_refuses_to_train_past_its_epochs_to_reach_select_step(paper):
    from rlmt.train.grpo import check_select_step_reached
    from rlmt.train.runtime import TrainingSetupError

    settings = paper.settings("grpo", cell_named(paper, LLAMA_WARM))  # 2 epochs, 64 prompts per rollout
    check_select_step_reached(settings, 7544)  # 2 x 117 = 234 updates >= 135
    with pytest.raises(TrainingSetupError, match="select_step 135 is beyond"):
        check_select_step_reached(settings, 4000)  # 2 x (4000 // 64 = 62) = 124 updates < 135


def test_grpo_validates_only_where_the_selection_reads_it(paper, tmp_path):
    """select_step 135 reads no validation reward: no validation at all (it was 250 prompts x 8 every 45 steps)."""
    settings = paper.settings("grpo", cell_named(paper, LLAMA_WARM))
    assert grpo_args(paper, LLAMA_WARM, tmp_path).eval_strategy == "no"
    best = with_changes(settings, val_prompts=None, checkpoints={"select_step": "best_val_reward"})
    args = grpo_args(paper, LLAMA_WARM, tmp_path, settings=best)
    assert args.eval_strategy == "steps" and args.eval_steps == 45
    asked = with_changes(settings, val_prompts=32)  # the config asks for the curve: it gets it
    assert grpo_args(paper, LLAMA_WARM, tmp_path, settings=asked).eval_strategy == "steps"
    never = with_changes(settings, val_prompts=0)
    assert grpo_args(paper, LLAMA_WARM, tmp_path, settings=never).eval_strategy == "no"
    assert grpo_args(paper, LLAMA_WARM, tmp_path, settings=best, has_val=False).eval_strategy == "no"


@pytest.mark.parametrize("name,per_device", [
    (LLAMA_WARM, 64),  # a rollout of 64 prompts x 8 samples on 8 processes: 8 groups = 64 completions each
    (QWEN_128, 128),  # 128 prompts x 8 on 8 processes: 16 groups = 128 completions each
])
def test_a_validation_batch_holds_a_rollouts_share_of_groups(paper, tmp_path, name, per_device):
    """250 validation prompts x 8 then take ceil(2000 / (8 x 64)) = 4 vLLM calls per process, not 32 (one group each)."""
    settings = with_changes(paper.settings("grpo", cell_named(paper, name)), val_prompts=None,
                            checkpoints={"select_step": "best_val_reward"})
    args = grpo_args(paper, name, tmp_path, settings=settings)
    assert args.per_device_eval_batch_size == per_device
    assert args.per_device_eval_batch_size % args.num_generations == 0  # whole groups


def test_validation_forward_passes_stay_at_the_training_micro_batch(monkeypatch):
    """The large validation batch is for sampling; its log-prob forwards run in pieces of the micro-batch (2),
    never 64 sequences of 5,120 tokens at once."""
    from trl import GRPOTrainer

    from rlmt.train.grpo import left_truncating_trainer

    seen = []

    def parent(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs):
        seen.append(batch_size)
        return "logps"

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", parent)
    trainer = object.__new__(left_truncating_trainer(1024))
    trainer.args = SimpleNamespace(per_device_train_batch_size=2, per_device_eval_batch_size=64)
    ids = SimpleNamespace(size=lambda dim: 64)  # a validation batch of 64 sequences
    assert trainer._get_per_token_logps_and_entropies(None, ids, None, 4096) == "logps"  # _compute_loss: no size
    trainer._get_per_token_logps_and_entropies(None, ids, None, 4096, batch_size=64)  # TRL's eval-sized pieces
    trainer._get_per_token_logps_and_entropies(None, ids, None, 4096, batch_size=1)  # smaller ones stay
    assert seen == [2, 2, 1]


# ----------------------------------------------------------------------------- 7. disk: checkpoints kept


def save_like_the_trainer(out: Path, checkpoints, steps: list[int], val: dict[int, float] | None = None) -> list[int]:
    """Drive CheckpointCallback as GRPO/DPO build it (keep_last = save_total_limit, the cell's select rule)
    through the Trainer's saves at `steps`; the most checkpoints on disk at once."""
    from transformers.trainer_callback import TrainerState

    from rlmt.train import checkpoints as ckpt
    from rlmt.train.callbacks import CheckpointCallback

    callback = CheckpointCallback(out, WARM_NOTHINK, keep_last=checkpoints.save_total_limit,
                                  select_rule=checkpoints.select_step, val_metric="eval_reward")
    most = 0
    for step in steps:
        staging = out / f"{ckpt.STAGING_PREFIX}{step}"
        staging.mkdir(parents=True)
        (staging / "model.safetensors").write_bytes(b"weights")
        state = TrainerState(global_step=step)
        if val is not None:
            callback.on_evaluate(None, state, None, metrics={"eval_reward": val[step]})
        callback.on_save(None, state, None)
        most = max(most, len(ckpt.completed_steps(out)))
    return most


def test_paper_grpo_keeps_at_most_limit_plus_the_selected_checkpoint(paper, tmp_path):
    from rlmt.config import training_schedule
    from rlmt.train import checkpoints as ckpt

    cell = cell_named(paper, LLAMA_ZERO)
    settings = paper.settings("grpo", cell)
    limit = settings.checkpoints.save_total_limit
    assert limit == 2
    # the schedule the run follows: saves at 45, 90, 135 and stops there
    saved = training_schedule(paper, cell).saved_steps
    assert save_like_the_trainer(tmp_path / "stop", settings.checkpoints, saved) <= limit + 1
    assert sorted(ckpt.completed_steps(tmp_path / "stop")) == [90, 135]
    # run to the end (468 updates: saves every 45 and at 468): step 135 outlives the pruning
    full = with_changes(settings, checkpoints={"stop_at_select_step": False})
    steps = list(range(45, 468, 45)) + [468]
    assert save_like_the_trainer(tmp_path / "full", full.checkpoints, steps) == limit + 1
    assert sorted(ckpt.completed_steps(tmp_path / "full")) == [135, 450, 468]


def test_paper_dpo_keeps_at_most_limit_plus_the_best_checkpoint(paper, tmp_path):
    from rlmt.train import checkpoints as ckpt

    settings = paper.settings("dpo", cell_named(paper, DPO_CELL))
    best = with_changes(settings, checkpoints={"select_step": "best_val_reward"})
    limit = best.checkpoints.save_total_limit
    steps = [100, 200, 300, 400, 500]
    rewards = {100: 0.1, 200: 0.9, 300: 0.2, 400: 0.3, 500: 0.4}  # the best is step 200, three saves back
    assert save_like_the_trainer(tmp_path, best.checkpoints, steps, rewards) == limit + 1
    assert sorted(ckpt.completed_steps(tmp_path)) == [200, 400, 500]
    assert ckpt.select_step(tmp_path, "best_val_reward") == 200


# ----------------------------------------------------------------------------- 11b. the rename waits for every rank


def test_rank0_renames_the_checkpoint_only_after_every_rank_wrote_into_it(tmp_path, monkeypatch):
    """Rank 1 writes its rng_state_1.pth into checkpoint-2 and then reaches on_save; rank 0 must not rename
    checkpoint-2 to step-2 before that. The barrier is where rank 1 arrives (process group faked: one process)."""
    import torch.distributed as dist
    from transformers.trainer_callback import TrainerState

    from rlmt.train.callbacks import CheckpointCallback

    staging = tmp_path / "checkpoint-2"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"weights")
    (staging / "rng_state_0.pth").write_bytes(b"rank 0")
    rank1_done = []

    def rank1_writes_its_state():
        (staging / "rng_state_1.pth").write_bytes(b"rank 1")
        rank1_done.append(True)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: rank1_writes_its_state())  # rank 1 arrives: it wrote
    callback = CheckpointCallback(tmp_path, WARM_NOTHINK, keep_last=2)
    callback.on_save(None, TrainerState(global_step=2, is_world_process_zero=True), None)
    if not rank1_done:  # rank 0 did not wait: slower rank 1 writes now, after rank 0's on_save returned
        try:
            rank1_writes_its_state()
        except FileNotFoundError:
            pytest.fail("rank 0 renamed checkpoint-2 before rank 1 wrote its RNG state into it")
    assert (tmp_path / "step-2" / "rng_state_1.pth").read_bytes() == b"rank 1"
    assert not staging.exists()


def test_other_ranks_wait_at_the_same_barrier_and_rename_nothing(tmp_path, monkeypatch):
    import torch.distributed as dist
    from transformers.trainer_callback import TrainerState

    from rlmt.train.callbacks import CheckpointCallback

    (tmp_path / "checkpoint-2").mkdir()
    barriers = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(True))
    CheckpointCallback(tmp_path, WARM_NOTHINK, keep_last=2).on_save(
        None, TrainerState(global_step=2, is_world_process_zero=False), None)
    assert barriers == [True] and (tmp_path / "checkpoint-2").is_dir() and not (tmp_path / "step-2").exists()


# ----------------------------------------------------------------------------- 11a. no silent fall-back to generate


def test_a_gpu_node_without_vllm_is_an_error_unless_asked_for(monkeypatch):
    import importlib.util

    import torch

    from rlmt.train.runtime import TrainingSetupError, vllm_wanted

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(TrainingSetupError, match=r"install it .*or set rollout.use_vllm: false"):
        vllm_wanted(None)
    assert vllm_wanted(False) is False  # asked for explicitly: transformers' generate
    with pytest.raises(TrainingSetupError, match="not installed"):
        vllm_wanted(True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_wanted(None) is False  # a CPU machine: generate, as before


# ----------------------------------------------------------------------------- 1 + 9. the generation engine


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package recording how the engine is built and shut down (vllm needs a GPU)."""
    record = {"engines": [], "visible": [], "shutdowns": 0}

    class EngineCore:
        def shutdown(self):
            record["shutdowns"] += 1

    class LLM:
        def __init__(self, **kwargs):
            record["engines"].append(kwargs)
            record["visible"].append(os.environ.get("CUDA_VISIBLE_DEVICES"))
            self.llm_engine = SimpleNamespace(engine_core=EngineCore())

        def get_tokenizer(self):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(record["engines"][-1]["tokenizer"])

        def generate(self, inputs, sampling_params, use_tqdm=False):
            out = SimpleNamespace(text="an answer", token_ids=[1, 2], finish_reason="stop")
            return [SimpleNamespace(outputs=[out] * sampling_params.n) for _ in inputs]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return record


def prompt_length(model_dir: Path, messages: list[dict]) -> int:
    """Tokens of the rendered prompt, counted with the tokenizer alone."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_the_vllm_engine_is_sized_by_the_jobs_longest_prompt_and_shut_down(tiny_zoo, fake_vllm, tmp_path):
    """One engine for the whole file, its context the longest prompt + max_new_tokens (never the model's own
    context), although that prompt comes in the last chunk; shut down when the file is done."""
    from rlmt.generation import SamplingParams, generate_file

    model = tiny_zoo["llama-instruct"]
    items = [(str(i), [{"role": "user", "content": "hi"}]) for i in range(3)]
    long = [{"role": "user", "content": "tell me about " + "the long river and " * 20}]
    items.append(("long", long))
    params = SamplingParams(temperature=0.7, max_new_tokens=40, n=2)
    generate_file(model, items, tmp_path / "gen.jsonl", params, backend="vllm", chunk_size=1, progress=False)
    assert [e["max_model_len"] for e in fake_vllm["engines"]] == [prompt_length(model, long) + 40]
    assert prompt_length(model, long) > prompt_length(model, items[0][1]) + 50
    assert fake_vllm["shutdowns"] == 1


def test_an_explicit_context_too_short_for_the_job_is_an_error(tiny_zoo, fake_vllm):
    from rlmt.generation import GenerationError, SamplingParams
    from rlmt.generation.vllm_backend import VLLMGenerator

    gen = VLLMGenerator(tiny_zoo["llama-instruct"], max_model_len=16, progress=False)
    with pytest.raises(GenerationError, match="max_model_len=16 is shorter"):
        gen.prepare([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=40))
    assert fake_vllm["engines"] == []


def test_each_ranks_engine_sees_only_that_ranks_gpu(tiny_zoo, fake_vllm, monkeypatch):
    """Rank 1 of a node whose job owns GPUs 4-7: its engine process is started with GPU 5 alone visible."""
    from rlmt.generation import SamplingParams
    from rlmt.generation.vllm_backend import VLLMGenerator

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    gen = VLLMGenerator(tiny_zoo["llama-instruct"], device="cuda:1", progress=False)
    gen.prepare([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=8))
    assert fake_vllm["visible"] == ["5"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"  # this process's own view is restored
    gen.close()
    assert fake_vllm["shutdowns"] == 1 and gen.llm is None


# ----------------------------------------------------------------------------- 9. samples independent of the batch


def test_a_prompts_samples_do_not_depend_on_the_prompts_beside_it(tiny_zoo):
    """The transformers backend samples each row from its own stream (seed, prompt, sample index): the same
    samples in a batch of four prompts, alone, or in another order (what DPO's sharding over ranks needs)."""
    from rlmt.generation import SamplingParams, make_generator

    model = tiny_zoo["llama-instruct"]
    prompts = [[{"role": "user", "content": f"Tell me about {w}"}] for w in ("rain", "snow", "fish", "water")]
    assert len({prompt_length(model, p) for p in prompts}) == 1  # one length: no padding, the same arithmetic
    gen = make_generator("transformers", model, device="cpu", batch_size=12, progress=False)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=8, n=3, seed=11)
    together = gen.generate(prompts, params)  # all four prompts in one batch of 12 rows
    gen.batch_size = 3
    alone = gen.generate(prompts[::-1], params)[::-1]  # one prompt per batch, the other way round
    assert together == alone
    assert all(len({c.text for c in samples}) > 1 for samples in together)  # n streams, not one copied
    other_seed = gen.generate(prompts[:1], SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=8, n=3, seed=12))
    assert other_seed[0] != together[0]
