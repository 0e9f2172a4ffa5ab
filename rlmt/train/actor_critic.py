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

from rlmt.train.rollout import position_ids

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
    """A critic from a policy dir (``fresh_head=True``) or from a checkpoint's ``critic/`` dir."""
    from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

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
        config = AutoConfig.from_pretrained(str(model_dir), num_labels=1, trust_remote_code=False)
        # No dropout: the values that make the advantages and the values being fit must be one function.
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(str(model_dir), config=config, use_safetensors=True,
                                                                dtype=dtype, trust_remote_code=False)
        if fresh_head:
            head = model.score  # *ForTokenClassification names its head `score`
            nn.init.zeros_(head.weight)
            if getattr(head, "bias", None) is not None:
                nn.init.zeros_(head.bias)
        return TokenClassificationCritic(model)
    raise ValueError(f"unknown critic kind {kind!r}; allowed: value-head, token-classification")


def save_critic(critic: nn.Module, out: str | Path, kind: CriticKind, state_dict: dict | None = None) -> Path:
    """Write the critic as safetensors (a model dir plus, for the value head, its own file).

    `state_dict`: the critic's full parameters (keys as in ``critic.state_dict()``) when the
    module's own are shards (FSDP2); default: the module's.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else critic.state_dict()
    if isinstance(critic, ValueHeadCritic):
        critic.body.save_pretrained(str(out), safe_serialization=True, state_dict=_under(state, "body."))
        save_file({k: v.detach().contiguous().cpu() for k, v in _under(state, "value_head.").items()},
                  str(out / VALUE_HEAD_FILE))
    else:
        critic.model.save_pretrained(str(out), safe_serialization=True, state_dict=_under(state, "model."))
    (out / CRITIC_META).write_text(json.dumps({"kind": kind}) + "\n")
    return out


def _under(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class ActorCritic(nn.Module):
    """``forward`` returns the policy's logits for the response tokens and the critic's values for them."""

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
                with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = position_ids(attention_mask)
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                             use_cache=False).logits[:, prompt_width - 1:-1]
        values = None
        if with_values:
            # V(s_t) for response token t is read at the position before it, like the logits.
            values = self.critic(input_ids, attention_mask, pos)[:, prompt_width - 1:-1]
        return logits, values

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
