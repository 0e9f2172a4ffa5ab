"""A job's models, built from configurations and prepared the way the trainers prepare them.

:func:`build_models` builds every model of a job from its config (never from weights), at a chosen
depth, with the constructors the trainers load through: ``AutoModelForCausalLM`` for the policy and
the reference, ``AutoModelForSequenceClassification`` for the reward model, and rlmt's own critics
(:class:`rlmt.train.actor_critic.ValueHeadCritic` over ``AutoModel``, :class:`TokenClassificationCritic`
over ``AutoModelForTokenClassification`` with one label and no dropout, as ``load_critic`` makes them).
The tracer calls it inside a ``FakeTensorMode``, where a model of any size costs nothing.

:func:`prepare` then does what the trainer does before its first step; real models loaded with
``from_pretrained`` go through it too (the tests that compare a trace with a real step), so both take
one path: train/eval modes, frozen models without gradients, gradient checkpointing as the Trainer
enables it (``activation_checkpointing_enable``, non-reentrant; PPO: ``ActorCritic.set_gradient_checkpointing``,
as ``ppo_update`` calls it), TRL's fused LM head on the models TRL patches (``add_fused_lm_head``: SFT,
GRPO and DPO, policy and reference), and the AdamW optimizer with its state already allocated (one step
on zero gradients), as in any step after the first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from rlmt.memtrace.spec import JobSpec

LEARNING_RATE = 1e-6  # any value: the trace measures memory, not the update
WEIGHT_DECAY = 0.01


@dataclass
class JobModels:
    """The modules of one job. ``trained`` is what the optimizer steps: the policy, or PPO's ActorCritic."""

    policy: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    critic: nn.Module | None = None
    reference: nn.Module | None = None
    reward: nn.Module | None = None

    def roles(self) -> list[tuple[str, nn.Module, bool]]:
        """(role, module, trainable) of every model the job holds."""
        out = [("policy", self.policy, True)]
        out += [(role, m, trainable) for role, m, trainable in (("critic", self.critic, True),
                                                                ("reference", self.reference, False),
                                                                ("reward", self.reward, False)) if m is not None]
        return out


def with_depth(config, layers: int):
    """A copy of `config` with `layers` decoder layers (per-layer lists such as ``layer_types`` cut to fit)."""
    fields = config.to_dict()
    fields["num_hidden_layers"] = layers
    if isinstance(fields.get("layer_types"), list):
        fields["layer_types"] = fields["layer_types"][:layers]
    return config.__class__.from_dict(fields)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules created inside get parameters of `dtype` (a fake tensor cannot be cast afterwards)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def build_models(spec: JobSpec, policy_config, reward_config=None, *, policy_layers: int,
                 reward_layers: int | None = None) -> JobModels:
    """The job's models at the given depths, unprepared (see :func:`prepare`); weights are not initialised."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.initialization import no_init_weights

    weights = dtype_of(spec.weights_dtype)
    policy_config = with_depth(policy_config, policy_layers)
    with no_init_weights(), default_dtype(weights):
        policy = AutoModelForCausalLM.from_config(policy_config, dtype=weights)
        critic = build_critic(policy_config, spec.critic, weights) if spec.kind == "ppo" else None
        reference = None
        if spec.has_reference:
            # TRL's reference: the policy's dtype; rlmt's PPO loads its reference in fp32 (train/ppo.py)
            ref_dtype = torch.float32 if spec.kind == "ppo" else weights
            with default_dtype(ref_dtype):
                reference = AutoModelForCausalLM.from_config(policy_config, dtype=ref_dtype)
    reward = None
    if spec.reward_model is not None:
        reward_config = with_depth(reward_config, reward_layers or reward_config.num_hidden_layers)
        fields = {k: v for k, v in reward_config.to_dict().items() if k not in ("id2label", "label2id")}
        if fields.get("pad_token_id") is None:  # pooling at the last non-pad token needs one (its value is irrelevant)
            eos = fields.get("eos_token_id")
            fields["pad_token_id"] = (eos[0] if isinstance(eos, list) else eos) or 0
        reward_config = reward_config.__class__.from_dict({**fields, "num_labels": 1})
        rm_dtype = dtype_of(spec.reward_dtype)
        with no_init_weights(), default_dtype(rm_dtype):
            reward = AutoModelForSequenceClassification.from_config(reward_config, dtype=rm_dtype)
    for model in (policy, reference, reward):
        if model is not None:
            model.tie_weights()  # no_init_weights skips init_weights, which ties a tied head to the embeddings
    return prepare(spec, policy, critic=critic, reference=reference, reward=reward)


def build_critic(config, kind: str, dtype: torch.dtype) -> nn.Module:
    """PPO's critic from the policy's config, with the constructors ``load_critic`` uses (built, not loaded)."""
    from transformers import AutoModel, AutoModelForTokenClassification

    from rlmt.train.actor_critic import TokenClassificationCritic, ValueHeadCritic

    if kind == "value-head":
        body = AutoModel.from_config(config, dtype=dtype)
        return ValueHeadCritic(body, body.config.hidden_size)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    token_config = config.__class__.from_dict({**fields, "num_labels": 1, "classifier_dropout": 0.0})
    return TokenClassificationCritic(AutoModelForTokenClassification.from_config(token_config, dtype=dtype))


def prepare(spec: JobSpec, policy: nn.Module, *, critic: nn.Module | None = None, reference: nn.Module | None = None,
            reward: nn.Module | None = None) -> JobModels:
    """Set the models up as the job's trainer does (module docstring) and make the optimizer with its state."""
    from rlmt.train.actor_critic import ActorCritic

    for frozen in (reference, reward):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    if spec.kind == "ppo":
        trained = ActorCritic(policy, critic)
        trained.set_gradient_checkpointing(spec.gradient_checkpointing)  # as ppo_update does
        groups = trained.param_groups(LEARNING_RATE, LEARNING_RATE * 10, WEIGHT_DECAY)
    else:
        if spec.gradient_checkpointing:
            enable_checkpointing(policy)
        add_trl_fused_head(spec, policy, reference)
        trained = policy
        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "weight_decay": WEIGHT_DECAY}]
    trained.train()
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, **optimizer_flags(spec.optimizer))
    allocate_optimizer_state(optimizer)
    return JobModels(policy=policy, trained=trained, optimizer=optimizer, critic=critic, reference=reference,
                     reward=reward)


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient checkpointing as transformers' Trainer enables it: every decoder layer, non-reentrant."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_trl_fused_head(spec: JobSpec, policy: nn.Module, reference: nn.Module | None) -> None:
    """TRL 1.x's chunked log-prob LM head, with the outputs each trainer asks of it (its ``__init__``)."""
    from trl.trainer.utils import add_fused_lm_head

    outputs = {"sft": ("log_probs", "entropy", "is_top1"), "grpo": ("log_probs", "entropy"),
               "dpo": ("log_probs", "entropy", "mean_logits", "is_top1")}[spec.kind]
    temperature = spec.temperature if spec.kind == "grpo" else 1.0
    add_fused_lm_head(policy, temperature=temperature, outputs=outputs)
    if reference is not None:
        add_fused_lm_head(reference, temperature=temperature)


def optimizer_flags(kind: str) -> dict[str, bool]:
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kind]


def allocate_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """One AdamW step on zero gradients: the moments and step counters exist, as after any first step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of decoder layers (the ModuleList named ``layers``)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return module
    return None


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (shared storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()  # one Python object per storage while it lives (as MemTracker keys them)
        if id(storage) not in seen:
            seen.add(id(storage))
            total += storage.nbytes()
    return total
