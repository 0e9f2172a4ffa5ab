"""rlmt.memtrace: offline model configs, the fake-tensor tracer on cases worked by hand, extrapolation in depth,
sharding arithmetic and the cache. The checks against real training steps are in test_memtrace_real.py."""

from __future__ import annotations

import json

import pytest

LLAMA = "meta-llama/Llama-3.1-8B"


# ----------------------------------------------------------------------------- model configs


def test_shipped_llama_config_is_the_public_one():
    from rlmt.memtrace import context_length, kv_bytes_per_token, model_config

    config, origin = model_config(LLAMA)
    assert origin == "shipped:llama-3.1-8b"
    assert (config.vocab_size, config.max_position_embeddings, config.tie_word_embeddings) == (128256, 131072, False)
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 8.0
    assert context_length(LLAMA) == 131072
    # K and V of one token: 32 layers x 8 KV heads x 128 (4096 / 32) dims x 2 tensors x 2 bytes = 131,072 bytes
    assert kv_bytes_per_token(config, 2) == 131072


@pytest.mark.parametrize("source, published", [
    (LLAMA, 8_030_261_248),  # model card: 8.03B (the count model_facts.yaml quotes)
    ("Qwen/Qwen2.5-7B", 7_615_616_512),  # model card: 7.61B
])
def test_a_model_built_from_its_shipped_config_has_the_published_parameter_count(source, published):
    import torch
    from transformers import AutoModelForCausalLM

    from rlmt.memtrace import model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(source)[0])
    assert sum(p.numel() for p in model.parameters()) == published


def test_every_model_in_model_facts_has_a_config_with_its_shapes_and_head():
    import yaml
    from importlib import resources

    from rlmt.memtrace import model_config
    from rlmt.memtrace.model_config import is_sequence_classifier

    facts = yaml.safe_load(resources.files("rlmt.resources").joinpath("model_facts.yaml").read_text())
    for source, entry in facts["models"].items():
        config, origin = model_config(source)
        arch = facts["architectures"][entry["architecture"]]
        assert origin.startswith("shipped:"), source
        assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
                config.num_key_value_heads, config.vocab_size, config.tie_word_embeddings) == (
            arch["hidden"], arch["intermediate"], arch["layers"], arch["heads"], arch["kv_heads"], arch["vocab"],
            arch["tied_embeddings"]), source
        assert is_sequence_classifier(config) == (entry["head"] == "score"), source
        if entry["head"] == "score":
            assert config.num_labels == 1


def test_instruct_qwen_has_a_shorter_context_than_its_base():
    from rlmt.memtrace import context_length

    # Qwen2.5-7B's config.json: 131072; Qwen2.5-7B-Instruct's (and OpenThinker2-7B's, its fine-tune): 32768
    assert context_length("Qwen/Qwen2.5-7B") == 131072
    assert context_length("Qwen/Qwen2.5-7B-Instruct") == 32768
    assert context_length("open-thoughts/OpenThinker2-7B") == 32768


def test_a_hugging_face_cache_copy_comes_before_the_shipped_config(tmp_path, monkeypatch):
    from rlmt.memtrace import context_length, model_config

    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    data = json.loads((model_config("llama-3.1-8b")[0]).to_json_string())
    data["max_position_embeddings"] = 4096  # a different value proves which file was read
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(data))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config, origin = model_config(LLAMA)
    assert origin == f"hf-cache:{repo / 'snapshots' / 'abc123' / 'config.json'}"
    assert context_length(LLAMA) == 4096


def test_local_dirs_tiny_models_and_unknown_sources(tiny_zoo, tmp_path):
    from rlmt.memtrace import context_length, model_config
    from rlmt.models.tiny import LAYERS, MAX_POS

    config, origin = model_config(str(tiny_zoo["llama-instruct"]))
    assert origin == f"dir:{tiny_zoo['llama-instruct'] / 'config.json'}" and config.num_hidden_layers == LAYERS
    tiny, origin = model_config("tiny:qwen-base")
    assert origin == "tiny:qwen-base" and tiny.model_type == "qwen2" and tiny.max_position_embeddings == MAX_POS
    assert model_config("no-such-org/no-such-model") is None and context_length("no-such-org/no-such-model") is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-transformers-model"}))
    assert model_config(str(tmp_path)) is None  # no remote code: an unknown model type is unknown


# ----------------------------------------------------------------------------- the tracer on a case worked by hand


def test_linear_layer_with_adamw_traced_on_fake_tensors_matches_the_bytes_worked_by_hand():
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rlmt.memtrace.models import JobModels, allocate_optimizer_state
    from rlmt.memtrace.tracer import PhaseRecorder

    n_in, n_out, rows = 64, 32, 8
    with FakeTensorMode():
        layer = nn.Linear(n_in, n_out)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, foreach=False)
        allocate_optimizer_state(optimizer)
        recorder = PhaseRecorder(JobModels(policy=layer, trained=layer, optimizer=optimizer))
        with recorder.phase("forward", ("policy",)):
            x = torch.randn(rows, n_in)
            y = layer(x)
        with recorder.phase("backward", ("policy",)):
            y.sum().backward()
        with recorder.phase("optimizer_step", ()):
            optimizer.step()
    forward, backward, step = (p.bytes for p in recorder.phases)
    params = 4 * (n_in * n_out + n_out)  # fp32 weight and bias: 8,320 bytes
    # AdamW (torch 2.x): exp_avg and exp_avg_sq per parameter, like it, plus a float32 scalar `step` per parameter
    optimizer_state = 2 * params + 2 * 4
    assert forward == {"params": params, "buffers": 0, "grads": 0, "optimizer": optimizer_state,
                       "activations": 4 * rows * (n_in + n_out), "temporaries": 0, "other": 0}  # x and y
    # the backward makes the gradients, as large as the parameters; the loss and its seed gradient are 2 scalars
    assert backward == {"params": params, "buffers": 0, "grads": params, "optimizer": optimizer_state,
                        "activations": 2 * 4, "temporaries": 0, "other": 0}
    # the for-loop AdamW computes exp_avg_sq.sqrt() and its division by sqrt(bias correction) out of place:
    # two weight-sized temporaries at once
    assert step == {"params": params, "buffers": 0, "grads": params, "optimizer": optimizer_state, "activations": 0,
                    "temporaries": 2 * 4 * n_in * n_out, "other": 0}
    # FLOPs: forward addmm 2 x rows x in x out; backward: the weight gradient only (x needs none), as much again
    assert [p.flops for p in recorder.phases] == [2 * rows * n_in * n_out, 2 * rows * n_in * n_out, 0]


def test_flop_count_equals_torchs_flop_counter_mode(tiny_zoo):
    """The tracer counts FLOPs with FlopCounterMode's formulas, without its module hooks: the same totals."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from rlmt.memtrace.flops import FlopCount, formulas
    from rlmt.memtrace.model_config import model_config

    config = model_config(str(tiny_zoo["llama-base"]))[0]
    with FakeTensorMode():
        model = AutoModelForCausalLM.from_config(config)
        ids = torch.randint(0, config.vocab_size, (2, 64))
        with FlopCount() as ours:
            model(input_ids=ids, labels=ids).loss.backward()
        with FlopCounterMode(display=False, custom_mapping=formulas()) as torchs:
            model(input_ids=ids, labels=ids).loss.backward()
    assert ours.total == torchs.get_total_flops() > 0


# ----------------------------------------------------------------------------- whole jobs, fast


def tiny_spec(tiny_zoo, kind: str, **changes):
    from rlmt.memtrace import JobSpec

    sizes = {"sft": dict(sequences=2, completion_length=96),
             "grpo": dict(sequences=2, prompt_length=32, completion_length=64, beta=0.04, entropy_coef=0.01,
                          temperature=0.7, reward_model=str(tiny_zoo["reward"]), reward_sequences=2, reward_length=64),
             "dpo": dict(sequences=1, prompt_length=32, completion_length=64),
             "ppo": dict(sequences=2, prompt_length=32, completion_length=64, temperature=0.7, kl_coef=0.05,
                         entropy_coef=0.01, rollout_sequences=2, logprob_chunk_tokens=32,
                         reward_model=str(tiny_zoo["reward"]), reward_sequences=2, reward_length=64)}[kind]
    base = dict(kind=kind, model=str(tiny_zoo["llama-instruct"]), gradient_checkpointing=True,
                weights_dtype="float32", optimizer="for-loop", kernels="cpu", reward_dtype="float32")
    return JobSpec(**{**base, **sizes, **changes})


TRAINING = ["forward", "backward", "backward.layers", "backward.embeddings", "optimizer_step"]
PHASES = {"sft": TRAINING, "grpo": ["reward", "reference", *TRAINING], "dpo": TRAINING,
          "ppo": ["rollout_logprobs", "reward", "values", *TRAINING]}


@pytest.mark.parametrize("kind", ["sft", "grpo", "dpo", "ppo"])
def test_extrapolation_from_two_shallow_traces_equals_the_trace_at_full_depth(tiny_zoo, kind):
    """Every category is affine in the number of layers: 1 and 2 layers predict the tiny models' 4 exactly."""
    from rlmt.memtrace.tracer import trace
    from rlmt.models.tiny import LAYERS

    spec = tiny_spec(tiny_zoo, kind)
    extrapolated, full = trace(spec), trace(spec.replace(layers=LAYERS))
    assert [p.name for p in extrapolated.phases] == PHASES[kind]
    assert len(extrapolated.traced_depths) == (3 if spec.reward_model else 2) and full.traced_depths == (
        {"policy": LAYERS, **({"reward": LAYERS} if spec.reward_model else {})},)
    for a, b in zip(extrapolated.phases, full.phases):
        assert a.bytes == b.bytes and a.flops == b.flops, a.name
    assert [(m.role, m.params, m.param_bytes, m.layers) for m in extrapolated.models] == \
           [(m.role, m.params, m.param_bytes, m.layers) for m in full.models]


def test_a_model_without_a_config_is_an_error_that_names_it():
    from rlmt.memtrace import JobSpec, UnknownModelError, trace

    with pytest.raises(UnknownModelError, match="no-such-org/no-such-model"):
        trace(JobSpec(kind="sft", model="no-such-org/no-such-model", sequences=1, completion_length=8))


def test_job_spec_refuses_what_no_trainer_runs():
    from rlmt.memtrace import JobSpec

    with pytest.raises(ValueError, match="kind 'rloo'"):
        JobSpec(kind="rloo", model=LLAMA, sequences=1, completion_length=8)
    with pytest.raises(ValueError, match="prompt_length must be >= 1"):
        JobSpec(kind="grpo", model=LLAMA, sequences=1, completion_length=8)
    with pytest.raises(ValueError, match="rollout_sequences"):
        JobSpec(kind="ppo", model=LLAMA, sequences=1, prompt_length=4, completion_length=8)


def test_gpu_kernels_drop_the_cpu_fallbacks_temporaries_and_nothing_else(tiny_zoo):
    """TRL's head on a GPU folds its tiles in Triton (no allocation); the CPU fallback allocates fp32 tiles."""
    from rlmt.memtrace.tracer import trace

    cpu = trace(tiny_spec(tiny_zoo, "sft", layers=1))
    gpu = trace(tiny_spec(tiny_zoo, "sft", layers=1, kernels="gpu"))
    for name in ("forward", "backward"):  # the head's forward and its backward
        a, b = cpu.phase(name), gpu.phase(name)
        assert {k: a.bytes[k] for k in ("params", "grads", "optimizer")} == \
               {k: b.bytes[k] for k in ("params", "grads", "optimizer")}
        assert b.total < a.total, name
        assert b.flops == a.flops > 0, name  # the same products
    from trl.kernels import chunked_logprob

    assert chunked_logprob._forward_tile.__module__ == "trl.kernels.chunked_logprob"  # restored after the trace


# ----------------------------------------------------------------------------- sharding


def synthetic_trace():
    """A bf16 policy of 1e9 parameters (2e9 bytes), 10 layers of 1.6e8 bytes, and a frozen bf16 reward model."""
    from rlmt.memtrace import JobSpec, ModelMemory, PhaseMemory, TraceResult

    zero = dict.fromkeys(("params", "buffers", "grads", "optimizer", "activations", "temporaries", "other"), 0)
    policy = ModelMemory("policy", True, 10 ** 9, 2 * 10 ** 9, 10, 16 * 10 ** 7, optimizer_bytes=4 * 10 ** 9)
    reward = ModelMemory("reward", False, 5 * 10 ** 8, 10 ** 9, 10, 8 * 10 ** 7)
    resident = {**zero, "params": 3 * 10 ** 9, "optimizer": 4 * 10 ** 9}
    phases = (PhaseMemory("reward", {**resident, "activations": 10 ** 9}, 0, ("reward",)),
              PhaseMemory("backward", {**resident, "grads": 2 * 10 ** 9, "activations": 5 * 10 ** 9,
                                               "temporaries": 10 ** 9}, 0, ("policy",)),
              PhaseMemory("optimizer_step", {**resident, "grads": 2 * 10 ** 9, "temporaries": 2 * 10 ** 9}, 0, ()))
    spec = JobSpec(kind="sft", model=LLAMA, sequences=1, completion_length=8)
    return TraceResult(spec=spec, phases=phases, models=(policy, reward))


def test_per_gpu_parts_under_each_sharding_worked_by_hand():
    from rlmt.memtrace import per_gpu

    result = synthetic_trace()
    single = per_gpu(result, "single", 1)
    assert single.phase == "backward" and single.total == 3e9 + 2e9 + 4e9 + 5e9 + 1e9
    ddp = per_gpu(result, "ddp", 4)
    assert ddp.parts["buckets"] == 2 * 10 ** 9 and ddp.total == single.total + 2e9
    # ZeRO-2 on 4 GPUs: bf16 weights whole (2e9) + the reward model (1e9); bf16 grads 2 x 1e9 / 4; fp32 master and
    # moments 12 x 1e9 / 4
    zero2 = per_gpu(result, "zero2", 4).parts
    assert (zero2["params"], zero2["grads"], zero2["optimizer"], zero2["gather"]) == (3e9, 5e8, 3e9, 0)
    # ZeRO-3: bf16 weights 2 x 1e9 / 4 (+ the reward model whole); gather while the policy computes: its non-layer
    # bytes (2e9 - 10 x 1.6e8 = 4e8) + two layers (3.2e8)
    zero3 = per_gpu(result, "zero3", 4)
    assert zero3.phase == "backward"
    assert (zero3.parts["params"], zero3.parts["grads"], zero3.parts["optimizer"], zero3.parts["gather"]) == \
           (5e8 + 1e9, 5e8, 3e9, 4e8 + 3.2e8)
    # FSDP: fp32 master shards 4 x 1e9 / 4, fp32 grad shards likewise, fp32 moments 8 x 1e9 / 4
    fsdp = per_gpu(result, "fsdp", 4).parts
    assert (fsdp["params"], fsdp["grads"], fsdp["optimizer"]) == (1e9 + 1e9, 1e9, 2e9)
    # the optimizer step's temporaries scale with the fp32 state it steps: 2e9 x (4 / 2 bytes) / 4
    step = [p for p in result.phases if p.name == "optimizer_step"][0]
    from rlmt.memtrace.sharding import phase_parts

    assert phase_parts(result, step, "fsdp", 4)["temporaries"] == 10 ** 9
    assert per_gpu(result, "zero3", 4).describe() == "params 1.4, grads 0.5, optimizer 2.8, activations 4.7, " \
                                                     "temporaries 0.9, gather 0.7"


def test_precision_follows_each_trainer():
    from rlmt.memtrace import precision

    assert precision("grpo", "zero3") == {"weights_dtype": "bfloat16", "autocast_dtype": None, "optimizer": "fused"}
    assert precision("ppo", "ddp") == {"weights_dtype": "float32", "autocast_dtype": "bfloat16",
                                       "optimizer": "foreach"}
    assert precision("ppo", "fsdp2")["weights_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="unknown sharding"):
        precision("sft", "zero4")


# ----------------------------------------------------------------------------- cache


def test_a_warm_cache_returns_the_trace_without_tracing(tiny_zoo, tmp_path):
    from rlmt.memtrace import cache_key, cached_trace, trace_count

    spec = tiny_spec(tiny_zoo, "sft", layers=1)
    first = cached_trace(spec, tmp_path)
    count = trace_count()
    second = cached_trace(spec, tmp_path)
    assert trace_count() == count  # nothing traced
    assert second.to_dict() == first.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == [f"{cache_key(spec)}.json"]
    assert cache_key(spec.replace(sequences=3)) != cache_key(spec)


def test_the_cache_key_follows_the_models_config_file(tiny_zoo, tmp_path):
    import shutil

    from rlmt.memtrace import cache_key

    model = tmp_path / "model"
    shutil.copytree(tiny_zoo["llama-instruct"], model)
    spec = tiny_spec(tiny_zoo, "sft", model=str(model))
    before = cache_key(spec)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 8
    (model / "config.json").write_text(json.dumps(config))
    assert cache_key(spec) != before


def test_importing_the_package_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, rlmt.memtrace; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip() == "False"

