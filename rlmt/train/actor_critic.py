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
        body = AutoModel.from_pretrained(str(model_dir), use_safetensors=True, dtype=dtype)
        critic = ValueHeadCritic(body, body.config.hidden_size).to(dtype)
        if fresh_head:
            nn.init.zeros_(critic.value_head.weight)
            nn.init.zeros_(critic.value_head.bias)
        else:
            from safetensors.torch import load_file

            critic.value_head.load_state_dict(load_file(str(Path(model_dir) / VALUE_HEAD_FILE)))
        return critic
    if kind == "token-classification":
        config = AutoConfig.from_pretrained(str(model_dir), num_labels=1)
        # No dropout: the values that make the advantages and the values being fit must be one function.
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(str(model_dir), config=config, use_safetensors=True,
                                                                dtype=dtype)
        if fresh_head:
            head = model.score  # *ForTokenClassification names its head `score`
            nn.init.zeros_(head.weight)
            if getattr(head, "bias", None) is not None:
                nn.init.zeros_(head.bias)
        return TokenClassificationCritic(model)
    raise ValueError(f"unknown critic kind {kind!r}; allowed: value-head, token-classification")


def save_critic(critic: nn.Module, out: str | Path, kind: CriticKind) -> Path:
    """Write the critic as safetensors (a model dir plus, for the value head, its own file)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(critic, ValueHeadCritic):
        critic.body.save_pretrained(str(out), safe_serialization=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in critic.value_head.state_dict().items()},
                  str(out / VALUE_HEAD_FILE))
    else:
        critic.model.save_pretrained(str(out), safe_serialization=True)
    (out / CRITIC_META).write_text(json.dumps({"kind": kind}) + "\n")
    return out


class ActorCritic(nn.Module):
    """``forward`` returns the policy's logits for the response tokens and the critic's values for them."""

    def __init__(self, policy: nn.Module, critic: nn.Module):
        super().__init__()
        self.policy = policy
        self.critic = critic

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
