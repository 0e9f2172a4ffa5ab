"""PPO's GPU path on CPU (issue 28): memory of the rollout's log-probs and of the update (defect 2), the
distribution a rollout samples from (defect 8), and the vLLM rollout engine's CPU-testable parts (defect 5).

What only a GPU shows (bench/gpu_check.sh): vLLM itself (the engine starting with external_launcher, sleep
and wake, load_weights into its fused layers, its sampler's distribution), peak memory and the step time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from rlmt.config import PPOConfig
from rlmt.rewards import RuleReward
from rlmt.thinking import WARM_NOTHINK

PROMPTS = [[{"role": "user", "content": "hi"}],
           [{"role": "user", "content": "Tell me a much longer story about a lighthouse, please."}],
           [{"role": "user", "content": "Name three colours."}],
           [{"role": "user", "content": "What is two plus two?"}]]


def _policy(model_dir):
    from rlmt.models.loading import load_causal_lm, load_tokenizer

    return (load_causal_lm(model_dir, device="cpu", dtype="float32"),
            load_tokenizer(model_dir, padding_side="left"))


def _actor_critic(model_dir, critic_kind: str = "value-head", head_seed: int | None = None):
    """Policy + critic from a zoo dir; `head_seed`: a random (not zero) value head, so the critic's body gets
    gradients too."""
    from rlmt.models.loading import load_causal_lm
    from rlmt.train.actor_critic import ActorCritic, load_critic

    critic = load_critic(model_dir, critic_kind, fresh_head=True)
    if head_seed is not None:
        head = critic.value_head if critic_kind == "value-head" else critic.model.score
        torch.nn.init.normal_(head.weight, std=0.5, generator=torch.Generator().manual_seed(head_seed))
    return ActorCritic(load_causal_lm(model_dir, device="cpu", dtype="float32"), critic)


def _batch(vocab: int, prompt_lengths=(3, 7, 5), prompt_width: int = 7, response: int = 6, seed: int = 0):
    """Left-padded prompts of the given lengths followed by `response` random tokens: (ids, attention, width)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (len(prompt_lengths), prompt_width + response), generator=g)
    attention = torch.ones_like(ids)
    for row, length in enumerate(prompt_lengths):
        ids[row, :prompt_width - length] = 3
        attention[row, :prompt_width - length] = 0
    return ids, attention, prompt_width


def _positions(attention):
    """Positions that skip left padding (as generate assigns them)."""
    return (attention.long().cumsum(-1) - 1).clamp(min=0)


def _whole_batch_scores(model, ids, attention, prompt_width, temperature):
    """Today's whole-batch computation (and ppo_math's formulas): the [B, R, V] logits, tempered in fp32."""
    from rlmt.train import ppo_math as pm

    logits = model(input_ids=ids, attention_mask=attention, position_ids=_positions(attention),
                   use_cache=False).logits[:, prompt_width - 1:-1].float() / temperature
    return pm.logprobs_from_logits(logits, ids[:, prompt_width:]), pm.entropy_from_logits(logits)


class HeadPositions:
    """Counts the positions each call of an LM head computes logits for (a forward hook on the real head)."""

    def __init__(self, head):
        self.calls: list[int] = []
        self.paused = False
        head.register_forward_hook(lambda module, args, out: None if self.paused else
                                   self.calls.append(out.shape[:-1].numel()))


# ----------------------------------------------------------------------------- defect 8: sampling distribution


def test_rollout_samples_from_the_tempered_softmax_not_the_checkpoints_generation_config(tiny_zoo, tmp_path,
                                                                                          monkeypatch):
    """A policy whose saved generation_config asks for Qwen2.5-Instruct's top_k 20 and repetition_penalty 1.05
    (and min_p, n-gram blocking, its own temperature/top_p) is sampled from the plain tempered softmax that
    the PPO log-probs score: at every generated position the probabilities ``generate`` hands to
    ``torch.multinomial`` equal softmax(logits / T) from an independent forward. At 481ebdd transformers
    filled top_k 20 etc. from the file (and top_k 50 from its defaults), zeroing all but 20 tokens."""
    from rlmt.train.rollout import sample

    policy_dir = tmp_path / "policy"
    shutil.copytree(tiny_zoo["llama-instruct"], policy_dir)
    config = json.loads((policy_dir / "generation_config.json").read_text())
    config.update({"_from_model_config": False, "do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.6,
                   "repetition_penalty": 1.05, "min_p": 0.05, "no_repeat_ngram_size": 2})
    (policy_dir / "generation_config.json").write_text(json.dumps(config))
    policy, tok = _policy(policy_dir)
    assert policy.generation_config.top_k == 20 and policy.generation_config.repetition_penalty == 1.05

    drawn: list[torch.Tensor] = []
    real_multinomial = torch.multinomial

    def recording_multinomial(probs, *args, **kwargs):
        drawn.append(probs.detach().clone())
        return real_multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    torch.manual_seed(0)
    temperature = 0.9
    ro = sample(policy, tok, PROMPTS, max_prompt_length=64, max_new_tokens=6, temperature=temperature, top_p=1.0,
                batch_size=len(PROMPTS))
    monkeypatch.setattr(torch, "multinomial", real_multinomial)

    with torch.no_grad():
        logits = policy(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                        position_ids=_positions(ro.attention_mask), use_cache=False).logits
    width = ro.response_mask.shape[1]
    assert len(drawn) >= width
    for t in range(width):
        rows = ro.response_mask[:, t].bool()
        expected = torch.softmax(logits[:, ro.prompt_width - 1 + t].float() / temperature, dim=-1)
        assert torch.allclose(drawn[t][rows], expected[rows], rtol=1e-4, atol=1e-7), f"position {t}"
    assert (drawn[0] > 0).sum(-1).min() == policy.config.vocab_size  # no token cut away (top-k, min-p)
    # the model's own generation_config is left as it was
    assert policy.generation_config.top_k == 20 and policy.generation_config.repetition_penalty == 1.05


def test_hf_and_vllm_sampling_settings_come_from_one_spec_with_every_reshaping_field_neutral():
    from rlmt.train.rollout import SamplingSpec, generation_config
    from rlmt.train.vllm_rollout import sampling_fields

    spec = SamplingSpec(temperature=0.7, top_p=0.95, max_new_tokens=4096, eos_token_ids=(128001, 128009),
                        stop_strings=("</response>",))
    hf = generation_config(spec, pad_token_id=0)
    assert (hf.do_sample, hf.temperature, hf.top_p, hf.max_new_tokens) == (True, 0.7, 0.95, 4096)
    assert (hf.top_k, hf.min_p, hf.typical_p, hf.repetition_penalty, hf.no_repeat_ngram_size) == (0, 0.0, 1.0, 1.0, 0)
    assert (hf.epsilon_cutoff, hf.eta_cutoff, hf.min_new_tokens, hf.num_beams) == (0.0, 0.0, 0, 1)
    assert hf.eos_token_id == [128001, 128009] and hf.stop_strings == ["</response>"]

    fields = sampling_fields(spec, seed=7)
    assert fields == {"n": 1, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                      "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 4096, "min_tokens": 0,
                      "stop": ["</response>"], "include_stop_str_in_output": True,
                      "stop_token_ids": [128001, 128009], "ignore_eos": False, "seed": 7, "logprobs": None,
                      "detokenize": True}
    plain = sampling_fields(SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=8, eos_token_ids=(2,)))
    assert plain["stop"] is None and plain["detokenize"] is False and plain["seed"] is None


# ----------------------------------------------------------------------------- defect 2: memory


@pytest.mark.parametrize("zoo_name", ["llama-instruct", "qwen-instruct"])
def test_response_logprobs_in_token_chunks_equal_the_whole_batch_computation(tiny_zoo, zoo_name):
    """Old/reference log-probs: one body forward, the LM head and the fp32 log-softmax `chunk_tokens` response
    positions at a time; equal (atol 1e-5, fp32 rounding) to the whole-batch [B, R, V] computation, with no
    head call covering more than one chunk, each response position scored once and no prompt position."""
    from rlmt.train.rollout import response_logprobs

    policy, _ = _policy(tiny_zoo[zoo_name])
    ids, attention, width = _batch(policy.config.vocab_size)
    with torch.no_grad():
        expected, _ = _whole_batch_scores(policy, ids, attention, width, 0.7)
        head = HeadPositions(policy.lm_head)
        for chunk in (1, 5, 7, 10_000):
            head.calls.clear()
            got = response_logprobs(policy, ids, attention, width, 0.7, chunk_tokens=chunk)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-5, rtol=0), (chunk, (got - expected).abs().max())
            n_positions = ids.shape[0] * (ids.shape[1] - width)  # 3 rows x 6 response tokens
            assert max(head.calls) <= chunk and sum(head.calls) == n_positions, (chunk, head.calls)
    assert policy.lm_head is policy.get_output_embeddings() and isinstance(policy.lm_head, torch.nn.Linear)


def length_reward() -> RuleReward:
    """A rule reward on the extracted answer (its length in characters / 100)."""
    return RuleReward(WARM_NOTHINK, lambda item: len(item.answer) / 100)


def test_make_experience_scores_a_micro_batch_at_a_time_and_reads_values_from_the_critic_alone(tiny_zoo):
    """Old and reference log-probs come `micro_batch_size` rows per forward (not `generation_batch_size`), the
    policy's head sees only response positions, each once (no second policy forward for the values); the numbers
    equal the whole-batch computation. At 481ebdd the head saw all 8 rows x (prompt + response) positions in the
    rollout and again in the values pass."""
    from accelerate import Accelerator

    from rlmt.models.loading import load_causal_lm
    from rlmt.train.ppo import make_experience

    model = _actor_critic(tiny_zoo["llama-instruct"], head_seed=1)
    reference = load_causal_lm(tiny_zoo["llama-instruct"], device="cpu", dtype="float32").eval()
    _, tok = _policy(tiny_zoo["llama-instruct"])
    settings = PPOConfig(micro_batch_size=2, generation_batch_size=8, kl_coef=0.1,
                         rollout={"max_prompt_length": 64, "max_completion_length": 8, "temperature": 0.8})
    policy_head, reference_head = HeadPositions(model.policy.lm_head), HeadPositions(reference.lm_head)
    real_generate = model.policy.generate

    def generate_unrecorded(*args, **kwargs):  # decoding's own head calls (one position per row) are not scoring
        policy_head.paused = True
        try:
            return real_generate(*args, **kwargs)
        finally:
            policy_head.paused = False

    model.policy.generate = generate_unrecorded
    torch.manual_seed(0)
    prompts = [PROMPTS[i % 4] for i in range(8)]
    batch = make_experience(Accelerator(cpu=True), model, reference, tok, length_reward(), prompts, WARM_NOTHINK,
                            settings)
    ro = batch.rollout
    rows, width = len(ro), ro.response_mask.shape[1]
    for head in (policy_head, reference_head):
        assert max(head.calls) <= settings.micro_batch_size * width, head.calls
        assert sum(head.calls) == rows * width, head.calls

    mask = ro.response_mask
    with torch.no_grad():
        old, _ = _whole_batch_scores(model.policy, ro.input_ids, ro.attention_mask, ro.prompt_width, 0.8)
        ref, _ = _whole_batch_scores(reference, ro.input_ids, ro.attention_mask, ro.prompt_width, 0.8)
        _, values = model(ro.input_ids, ro.attention_mask, ro.prompt_width)
    assert torch.allclose(ro.old_logprobs, old * mask, atol=1e-5)
    assert torch.allclose(batch.kl, (old - ref) * mask, atol=1e-5)
    assert torch.allclose(batch.values, values * mask, atol=1e-5)
    assert batch.values.abs().sum() > 0  # a random head: the check above is not 0 == 0


def _update_loss(logprobs, entropy, values, mask):
    return ((logprobs + 0.3 * entropy + (values - 0.5) ** 2) * mask).sum()


def test_the_updates_chunked_scores_and_their_gradients_equal_the_full_logits_ones(tiny_zoo):
    """The update's log-probs and entropies in chunks of 4 positions, each chunk's logits recomputed in the
    backward pass instead of kept: values and every parameter's gradient equal the whole-logits path's
    (atol 1e-5 / rtol 1e-4, fp32 rounding), and the head never computes more than 4 positions at once."""
    from rlmt.train import ppo_math as pm

    model = _actor_critic(tiny_zoo["llama-instruct"], head_seed=2)
    ids, attention, width = _batch(model.policy.config.vocab_size, seed=1)
    mask = torch.ones(ids.shape[0], ids.shape[1] - width)
    mask[0, 4:] = 0
    model.train()

    logits, values = model(ids, attention, width)
    logits = logits.float() / 0.7
    expected = _update_loss(pm.logprobs_from_logits(logits, ids[:, width:]), pm.entropy_from_logits(logits), values,
                            mask)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    head = HeadPositions(model.policy.lm_head)
    scores, values = model(ids, attention, width, temperature=0.7, chunk_tokens=4)
    forward_calls = len(head.calls)
    got = _update_loss(scores.logprobs, scores.entropy, values, mask)
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-5)
    assert forward_calls == 5 and len(head.calls) == 2 * forward_calls  # 18 positions / 4; each recomputed once
    assert max(head.calls) <= 4
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected_grads[name], atol=1e-5, rtol=1e-4), name


def _count_calls(module) -> list[int]:
    """Counts calls of `module` as they start (a pre-hook: torch's checkpoint stops a recomputation as soon as the
    last tensor the backward needs exists, which may be inside the module, before its forward hooks would run)."""
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("critic_kind", ["value-head", "token-classification"])
def test_gradient_checkpointing_recomputes_actor_and_critic_layers_with_the_same_gradients(tiny_zoo, critic_kind):
    """set_gradient_checkpointing(True): each layer of actor and critic runs again in the backward pass (its MLP
    is called twice per forward + backward) and the gradients are unchanged (atol 1e-6)."""
    model = _actor_critic(tiny_zoo["llama-instruct"], critic_kind, head_seed=3)
    critic_body = model.critic.body if critic_kind == "value-head" else model.critic.model.model
    ids, attention, width = _batch(model.policy.config.vocab_size, seed=2)
    model.train()
    grads, calls = {}, {}
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.set_gradient_checkpointing(enabled)  # idempotent
        policy_calls = _count_calls(model.policy.model.layers[0].mlp)
        critic_calls = _count_calls(critic_body.layers[1].mlp)
        scores, values = model(ids, attention, width, temperature=1.0, chunk_tokens=8)
        _update_loss(scores.logprobs, scores.entropy, values, torch.ones_like(values)).backward()
        grads[enabled] = {n: p.grad.clone() for n, p in model.named_parameters()}
        calls[enabled] = (len(policy_calls), len(critic_calls))
        model.zero_grad(set_to_none=True)
        for module in (model.policy.model.layers[0].mlp, critic_body.layers[1].mlp):
            module._forward_pre_hooks.clear()
    assert calls == {False: (1, 1), True: (2, 2)}
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, atol=1e-6), name


def test_ppo_update_trains_with_checkpointing_when_the_settings_say_so(tiny_zoo):
    """ppo_update switches actor and critic checkpointing to `settings.gradient_checkpointing` (on: the policy's
    layers run twice per micro-batch; off again: once)."""
    from accelerate import Accelerator

    from rlmt.train.ppo import PPOBatch, ppo_update
    from rlmt.train.rollout import sample

    model = _actor_critic(tiny_zoo["llama-instruct"])
    _, tok = _policy(tiny_zoo["llama-instruct"])
    torch.manual_seed(0)
    ro = sample(model.policy, tok, PROMPTS, max_prompt_length=64, max_new_tokens=5, temperature=1.0)
    zeros = torch.zeros_like(ro.old_logprobs)
    batch = PPOBatch(rollout=ro, scores=torch.zeros(len(ro)), values=zeros, advantages=zeros + 1.0, returns=zeros,
                     kl=zeros)
    optimizer = torch.optim.AdamW(model.param_groups(1e-5, 1e-5, 0.0))
    counts = {}
    for enabled in (True, False):
        settings = PPOConfig(mini_batch_size=4, micro_batch_size=2, gradient_checkpointing=enabled,
                             logprob_chunk_tokens=3, rollout={"temperature": 1.0})
        calls = _count_calls(model.policy.model.layers[0].mlp)
        metrics = ppo_update(Accelerator(cpu=True), model, optimizer, batch, settings)
        counts[enabled] = len(calls)
        model.policy.model.layers[0].mlp._forward_pre_hooks.clear()
        assert metrics["policy/entropy"] > 0 and "critic/loss" in metrics
    assert counts == {True: 4, False: 2}  # 2 micro-batches; each recomputed once under checkpointing


# ----------------------------------------------------------------------------- defect 5: the vLLM engine's parts


class RecordingLLM:
    """A stand-in for ``vllm.LLM`` that records what the engine asks of it and answers `replies` token ids."""

    def __init__(self, replies: list[list[int]]):
        from types import SimpleNamespace

        self.replies, self.events, self.loaded, self.requests = replies, [], [], []
        model = SimpleNamespace(load_weights=lambda pairs: self.loaded.extend((n, t.clone()) for n, t in pairs))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model))))

    def wake_up(self, tags=None):
        self.events.append(("wake_up", tuple(tags or ())))

    def sleep(self, level=1):
        self.events.append(("sleep", level))

    def reset_prefix_cache(self):
        self.events.append(("reset_prefix_cache",))

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        from types import SimpleNamespace

        self.events.append(("generate", len(prompts)))
        self.requests.append((prompts, sampling_params))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=reply)]) for reply in self.replies]


def test_a_rollout_through_the_engine_loads_the_policy_samples_with_our_settings_and_scores_with_the_policy(tiny_zoo):
    """sample(engine=...): the engine wakes its weights, receives every policy parameter (bf16, checkpoint names),
    drops its prefix cache, wakes the KV cache, generates from the prompt token ids with sampling_fields (one seed
    per prompt), sleeps at level 2; the Rollout cuts each reply at EOS and its old log-probs are the policy's own
    scores of the engine's tokens."""
    from rlmt.train.rollout import SamplingSpec, render_prompts, response_logprobs, sample
    from rlmt.train.vllm_rollout import VLLMRolloutEngine, sampling_fields

    policy, tok = _policy(tiny_zoo["llama-instruct"])
    eos = tok.eos_token_id
    replies = [[40, 41, eos, 42], [50, 51, 52, 53], [60, eos], [70, 71, 72]]  # EOS; length cap; EOS; length cap
    llm = RecordingLLM(replies)
    engine = VLLMRolloutEngine(llm, make_sampling_params=dict, sleep_mode=True)
    torch.manual_seed(5)
    ro = sample(policy, tok, PROMPTS, max_prompt_length=64, max_new_tokens=4, temperature=0.7, engine=engine,
                logprob_batch_size=2, logprob_chunk_tokens=3)

    assert llm.events == [("wake_up", ("weights",)), ("reset_prefix_cache",), ("wake_up", ("kv_cache",)),
                          ("generate", 4), ("sleep", 2)]
    expected_params = dict(policy.named_parameters())
    assert [n for n, _ in llm.loaded] == list(expected_params)
    for name, tensor in llm.loaded:
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected_params[name].detach().bfloat16()), name
    prompts_sent, params = llm.requests[0]
    assert [p["prompt_token_ids"] for p in prompts_sent] == render_prompts(tok, PROMPTS, 64)[0]
    seeds = [p.pop("seed") for p in params]
    assert len(set(seeds)) == 4  # one per prompt, drawn from torch's (per-step seeded) generator
    eos_ids = tuple(sorted({*policy.generation_config.eos_token_id, eos}))
    expected = sampling_fields(SamplingSpec(temperature=0.7, top_p=1.0, max_new_tokens=4, eos_token_ids=eos_ids))
    expected.pop("seed")
    assert params == [expected] * 4
    assert ro.response_lengths.tolist() == [3, 4, 2, 3] and ro.finished == [True, False, True, False]
    assert ro.response_ids[0, :3].tolist() == [40, 41, eos]
    with torch.no_grad():
        again = response_logprobs(policy, ro.input_ids, ro.attention_mask, ro.prompt_width, 0.7)
    assert torch.allclose(ro.old_logprobs, again * ro.response_mask, atol=1e-5)


def test_rollout_engine_is_vllm_only_where_wanted_and_gets_the_papers_context(monkeypatch, tmp_path):
    """No vLLM here: None (HF generate), and use_vllm: true refuses. With vLLM installed and a GPU, the engine is
    built with max_model_len = prompt + completion limit (896 + 4096), not the model's own context."""
    import importlib.util
    from types import SimpleNamespace

    from rlmt.train import vllm_rollout
    from rlmt.train.runtime import TrainingSetupError

    accelerator = SimpleNamespace(process_index=3, wait_for_everyone=lambda: None)
    if importlib.util.find_spec("vllm") is None:
        assert vllm_rollout.rollout_engine(PPOConfig(), tmp_path, accelerator) is None
        with pytest.raises(TrainingSetupError, match="vllm is not installed"):
            vllm_rollout.rollout_engine(PPOConfig(rollout={"use_vllm": True}), tmp_path, accelerator)
    assert vllm_rollout.rollout_engine(PPOConfig(rollout={"use_vllm": False}), tmp_path, accelerator) is None

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    started = {}
    monkeypatch.setattr(vllm_rollout.VLLMRolloutEngine, "start",
                        classmethod(lambda cls, model_dir, **kw: started.update(model_dir=model_dir, **kw) or "engine"))
    settings = PPOConfig(bf16=True, seed=2, generation_batch_size=8,
                         rollout={"max_prompt_length": 896, "max_completion_length": 4096,
                                  "vllm_gpu_memory_utilization": 0.35})
    assert vllm_rollout.rollout_engine(settings, tmp_path, accelerator) == "engine"
    assert started == {"model_dir": tmp_path, "gpu_memory_utilization": 0.35, "max_model_len": 4992,
                       "sleep_mode": True, "max_num_seqs": 8, "seed": 2003, "dtype": "bfloat16",
                       "trust_remote_code": False}


# ----------------------------------------------------------------------------- FSDP2 on 2 gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp2_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """One rank: shard a tiny actor-critic with FSDP2, gather its weights as the vLLM sync does, and run the
    update's forward + backward with checkpointing and chunked scores; rank 0 saves what it saw."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from rlmt.train.actor_critic import is_sharded, shard
        from rlmt.train.vllm_rollout import full_named_parameters

        model = _actor_critic(model_dir, head_seed=4)
        ids, attention, width = _batch(model.policy.config.vocab_size, seed=3)
        policy_mlp = _count_calls(model.policy.model.layers[0].mlp)
        critic_mlp = _count_calls(model.critic.body.layers[0].mlp)
        shard(model, device_type="cpu", world=world, bf16=False)
        assert is_sharded(model) and all(hasattr(p, "full_tensor") for p in model.policy.parameters())  # DTensors
        pairs = [(n, t.clone()) for n, t in full_named_parameters(model.policy)]
        pairs16 = [(n, t.clone()) for n, t in full_named_parameters(model.policy, torch.bfloat16)]

        model.train()
        model.set_gradient_checkpointing(True)
        scores, values = model(ids, attention, width, temperature=0.7, chunk_tokens=5)
        loss = _update_loss(scores.logprobs, scores.entropy, values, torch.ones_like(values))
        loss.backward()
        grads = {n: p.grad.full_tensor().clone() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save({"pairs": pairs, "pairs16": pairs16, "loss": loss.detach(), "grads": grads,
                        "calls": (len(policy_mlp), len(critic_mlp))}, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp2_run(tiny_zoo, tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp2")
    mp.spawn(_fsdp2_worker, args=(2, _free_port(), str(tiny_zoo["llama-instruct"]), str(out)), nprocs=2, join=True)
    return torch.load(out / "rank0.pt", weights_only=False)


@pytest.mark.slow
def test_fsdp2_weight_sync_yields_the_checkpoints_names_and_tensors(fsdp2_run, tiny_zoo):
    """The (name, tensor) pairs gathered from the FSDP2-sharded policy (2 gloo processes) are exactly the HF
    checkpoint's: the names in model.safetensors (what vLLM's Llama/Qwen2 load_weights reads) and its tensors,
    whole (fp32 exactly; bf16: the checkpoint cast to bf16)."""
    from safetensors.torch import load_file

    checkpoint = load_file(str(tiny_zoo["llama-instruct"] / "model.safetensors"))
    pairs = dict(fsdp2_run["pairs"])
    assert len(pairs) == len(fsdp2_run["pairs"]) and set(pairs) == set(checkpoint)
    for name, tensor in checkpoint.items():
        assert torch.equal(pairs[name], tensor), name
    for name, tensor in fsdp2_run["pairs16"]:
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, checkpoint[name].bfloat16()), name


@pytest.mark.slow
def test_fsdp2_update_with_checkpointing_and_chunks_matches_the_unsharded_full_logits_gradients(fsdp2_run, tiny_zoo):
    """Under FSDP2 (2 gloo processes, the same batch on each), with activation checkpointing and the chunked,
    recomputed scores: the layers ran again in the backward pass, and the loss and every full gradient equal the
    unsharded model's whole-logits computation (atol 1e-5 / rtol 1e-4)."""
    from rlmt.train import ppo_math as pm

    assert fsdp2_run["calls"] == (2, 2)
    model = _actor_critic(tiny_zoo["llama-instruct"], head_seed=4)
    ids, attention, width = _batch(model.policy.config.vocab_size, seed=3)
    model.train()
    logits, values = model(ids, attention, width)
    logits = logits.float() / 0.7
    loss = _update_loss(pm.logprobs_from_logits(logits, ids[:, width:]), pm.entropy_from_logits(logits), values,
                        torch.ones_like(values))
    loss.backward()
    assert torch.allclose(fsdp2_run["loss"], loss.detach(), rtol=1e-5)
    for name, param in model.named_parameters():
        assert torch.allclose(fsdp2_run["grads"][name], param.grad, atol=1e-5, rtol=1e-4), name
