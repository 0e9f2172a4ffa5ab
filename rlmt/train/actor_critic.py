"""The policy and its critic as one module, so one ``accelerator.prepare`` call distributes both.

Two critic kinds (``PPOConfig.critic``), both initialised from the policy's weights as the
reference configs do (``critic.model.path`` = the policy):

- ``value-head``: the policy's transformer body plus a fresh ``Linear(hidden, 1)``;
- ``token-classification``: ``AutoModelForTokenClassification`` with one label (verl's critic).

The new head starts at zero so that the first values are 0 and the first advantages equal the
(whitened) rewards, instead of noise from a random head.

Why one module: DDP and DeepSpeed wrap one model per engine. Holding actor and critic in one
``nn.Module`` with two parameter groups (``learning_rate`` and ``critic_lr``) lets one optimizer,
one backward and one ``prepare`` serve plain, DDP and ZeRO runs alike; the parameter sets are
disjoint, so the policy loss never moves the critic and vice versa.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from rlmt.train.token_logprobs import ResponseScores, position_ids, response_scores

CRITIC_DIR = "critic"
CRITIC_META = "critic.json"
VALUE_HEAD_FILE = "value_head.safetensors"
CriticKind = Literal["value-head", "token-classification"]


class ValueHeadCritic(nn.Module):
    def __init__(self, body: nn.Module, hidden_size: int):
        super().__init__()
        self.body = body
        self.value_head = nn.Linear(hidden_size, 1)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


class TokenClassificationCritic(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[..., 0]


def load_critic(model_dir: str | Path, kind: CriticKind, *, fresh_head: bool, dtype=torch.float32) -> nn.Module:
    """A critic from a policy dir (``fresh_head=True``: a zero head), or from a dir holding its body (a model
    dir) and ``value_head.safetensors``."""
    from transformers import AutoModel, AutoModelForTokenClassification

    from rlmt.models.loading import check_safetensors

    check_safetensors(model_dir)
    if kind == "value-head":
        body = AutoModel.from_pretrained(str(model_dir), use_safetensors=True, dtype=dtype, trust_remote_code=False)
        critic = ValueHeadCritic(body, body.config.hidden_size).to(dtype)
        if fresh_head:
            nn.init.zeros_(critic.value_head.weight)
            nn.init.zeros_(critic.value_head.bias)
        else:
            from safetensors.torch import load_file

            critic.value_head.load_state_dict(load_file(str(Path(model_dir) / VALUE_HEAD_FILE)))
        return critic
    if kind == "token-classification":
        config = token_classification_config(model_dir)
        model = AutoModelForTokenClassification.from_pretrained(str(model_dir), config=config, use_safetensors=True,
                                                                dtype=dtype, trust_remote_code=False)
        if fresh_head:
            head = model.score  # *ForTokenClassification names its head `score`
            nn.init.zeros_(head.weight)
            if getattr(head, "bias", None) is not None:
                nn.init.zeros_(head.bias)
        return TokenClassificationCritic(model)
    raise ValueError(f"unknown critic kind {kind!r}; allowed: value-head, token-classification")


def token_classification_config(model_dir: str | Path):
    """The token-classification critic's config: the policy's, with one label and no dropout (the values that
    make the advantages and the values being fit must be one function)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), num_labels=1, trust_remote_code=False)
    config.classifier_dropout = 0.0
    return config


HEAD_FILES = {"value-head": VALUE_HEAD_FILE, "token-classification": "score.safetensors"}


def critic_head(critic: nn.Module) -> nn.Module:
    """The critic's head on top of the policy's body: the value head, or the token classifier's ``score``."""
    return critic.value_head if isinstance(critic, ValueHeadCritic) else critic.model.score


def save_critic(out: str | Path, kind: CriticKind, head_state: dict) -> Path:
    """Write a checkpoint's critic record: ``critic.json`` (its kind) and its head's full weights (safetensors).

    The whole critic (body and head, fp32) lives in the checkpoint's training state, which a resume
    reads (:mod:`rlmt.train.ppo_checkpoint`); the head alone is small and shows what the critic
    learned on top of the policy's body.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head_state.items()}, str(out / HEAD_FILES[kind]))
    (out / CRITIC_META).write_text(json.dumps({"kind": kind}) + "\n")
    return out


class ActorCritic(nn.Module):
    """The policy and its critic; ``forward`` scores the response tokens with both (see :meth:`forward`)."""

    def __init__(self, policy: nn.Module, critic: nn.Module):
        super().__init__()
        self.policy = policy
        self.critic = critic

    @property
    def _no_split_modules(self) -> list[str]:
        """The FSDP2 units (:func:`shard`): the transformer layers, and the policy and the critic as a
        whole, so that ``policy.generate`` (called on the policy alone during a rollout) gathers the
        policy's embeddings and head, not only its layers."""
        names = []
        for part in (self.policy, getattr(self.critic, "body", None), getattr(self.critic, "model", None)):
            names += list(getattr(part, "_no_split_modules", None) or [])
        return sorted(set(names) | {type(self.policy).__name__, type(self.critic).__name__})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                with_values: bool = True, *, temperature: float | None = None, chunk_tokens: int | None = None
                ) -> tuple[torch.Tensor | ResponseScores, torch.Tensor | None]:
        """The policy's view of the response tokens and the critic's values for them (None without `with_values`).

        Without `temperature`: the policy's response logits, ``[B, R, V]`` (the whole tensor: small
        models and tests). With it: :class:`ResponseScores`, the response tokens' log-probs and entropies
        at that temperature, computed `chunk_tokens` positions at a time and recomputed in the backward
        pass, so the update never holds a micro-batch's full-vocabulary logits (PPO's update path).
        """
        pos = position_ids(attention_mask)
        if temperature is None:
            policy_out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                                     use_cache=False).logits[:, prompt_width - 1:-1]
        else:
            policy_out = response_scores(self.policy, input_ids, attention_mask, prompt_width, temperature,
                                         chunk_tokens=chunk_tokens, with_entropy=True)
        values = self.values(input_ids, attention_mask, prompt_width) if with_values else None
        return policy_out, values

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
        """V(s_t) for each response token t, read at the position before it like the logits: the critic alone
        (a rollout's values need no policy forward)."""
        return self.critic(input_ids, attention_mask, position_ids(attention_mask))[:, prompt_width - 1:-1]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer layer's activations in the backward pass, in actor and critic (or stop).

        Transformers' non-reentrant activation checkpointing, which checkpoints a layer's ``forward``
        inside its module hooks: it composes with FSDP2 (whose unit hooks stay outside the recomputed
        region) and with DDP. Idempotent: the update calls it with its setting every time.
        """
        for part in self._transformers():
            if any(getattr(m, "gradient_checkpointing", False) for m in part.modules()) == enabled:
                continue
            if enabled and hasattr(part, "activation_checkpointing_enable"):
                part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif enabled:
                part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            elif hasattr(part, "activation_checkpointing_disable"):
                part.activation_checkpointing_disable()
            else:
                part.gradient_checkpointing_disable()

    def _transformers(self) -> list[nn.Module]:
        """The transformers models inside: the policy and the critic's body (value head) or model."""
        return [m for m in (self.policy, getattr(self.critic, "body", None), getattr(self.critic, "model", None))
                if m is not None]

    def param_groups(self, learning_rate: float, critic_lr: float, weight_decay: float) -> list[dict]:
        return [
            {"params": [p for p in self.policy.parameters() if p.requires_grad], "lr": learning_rate,
             "weight_decay": weight_decay, "name": "policy"},
            {"params": [p for p in self.critic.parameters() if p.requires_grad], "lr": critic_lr,
             "weight_decay": weight_decay, "name": "critic"},
        ]


def shard(model: ActorCritic, *, device_type: str, world: int, bf16: bool) -> ActorCritic:
    """Shard actor and critic over the job's processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    Units, innermost first: every transformer layer, then the policy and the critic each as a
    whole (so ``policy.generate`` during a rollout gathers the policy's embeddings and head).
    The policy and the critic are the two FSDP roots (a rollout runs the policy alone, so the
    wrapper holding both, which has no parameters of its own, is no unit). Parameters, gradients and AdamW state are then 1/world per rank. bf16: the
    forward and backward compute in bf16, gradients are reduced and the master weights kept in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    wholes = {type(model.policy).__name__, type(model.critic).__name__}
    layers = set(model._no_split_modules) - wholes
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model.policy, mesh=mesh, mp_policy=mp)
    fully_shard(model.critic, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "policy", model), FSDPModule)
