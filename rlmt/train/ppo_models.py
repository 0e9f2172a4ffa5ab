"""PPO's actor-critic on each rank: full copies (one process, DDP) or built empty and sharded (FSDP2).

Why (issue 28, defect 10): an 8B policy and its critic in fp32 are ~62 GB. Materialised on the CPU of
every rank of an 8-GPU node before sharding, that is ~500 GB of host memory at start. Under FSDP2,
every rank here builds both modules on the meta device (shapes only, no memory), shards them, and
allocates its own shard on its device. The weights then come

- at a fresh start, from the main process alone: it reads the initial policy, then the critic built
  from it, one model at a time, and broadcasts it tensor by tensor into the other ranks' shards
  (``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)``), so no other rank
  ever holds a full copy;
- on resume, from each rank's own shard of the checkpoint (:mod:`rlmt.train.ppo_checkpoint`);
  nothing is read whole.

A module built from its config must behave as the one ``from_pretrained`` returns: the same config,
the model dir's ``generation_config.json`` (its stop tokens), eval mode, and the non-persistent
buffers (rotary frequencies), which no state dict carries: they are computed on the CPU as the
modules are built (only parameters go to the meta device) and copied back after the shards are
allocated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlmt.train.actor_critic import (
    ActorCritic,
    CriticKind,
    TokenClassificationCritic,
    ValueHeadCritic,
    load_critic,
    shard,
    token_classification_config,
)


def full_actor_critic(policy_dir: str | Path, kind: CriticKind) -> ActorCritic:
    """The initial policy and a fresh critic, whole, in fp32 on the CPU (one process, DDP)."""
    from rlmt.models.loading import load_causal_lm

    return ActorCritic(load_causal_lm(policy_dir, device="cpu", dtype="float32"),
                       load_critic(policy_dir, kind, fresh_head=True))


def sharded_actor_critic(policy_dir: str | Path, kind: CriticKind, *, device: torch.device, world: int, bf16: bool,
                         initial_weights: bool, is_main: bool) -> ActorCritic:
    """The actor-critic built on the meta device, sharded by FSDP2, each rank's shard allocated on `device`.

    ``initial_weights``: fill the shards with the initial policy and a fresh critic, read by the main
    process alone and broadcast (collective: every rank calls it). False (a resume): the shards are
    left for the checkpoint to fill; until then they hold whatever memory they were given.
    """
    model = empty_actor_critic(policy_dir, kind)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model = shard(model, device_type=device.type, world=world, bf16=bf16)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    if initial_weights:
        broadcast_initial_weights(model, policy_dir, kind, is_main=is_main)
    return model


def empty_actor_critic(policy_dir: str | Path, kind: CriticKind) -> ActorCritic:
    """Policy and critic from the policy's config: parameters on the meta device, buffers computed on the CPU."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationConfig

    policy_dir = Path(policy_dir)
    with init_empty_weights(include_buffers=False):
        policy = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(policy_dir), trust_remote_code=False),
                                                  dtype=torch.float32)
        if kind == "value-head":
            body = AutoModel.from_config(AutoConfig.from_pretrained(str(policy_dir), trust_remote_code=False),
                                         dtype=torch.float32)
            critic: nn.Module = ValueHeadCritic(body, body.config.hidden_size)
        elif kind == "token-classification":
            from transformers import AutoModelForTokenClassification

            critic = TokenClassificationCritic(AutoModelForTokenClassification.from_config(
                token_classification_config(policy_dir), dtype=torch.float32))
        else:
            raise ValueError(f"unknown critic kind {kind!r}; allowed: value-head, token-classification")
    if (policy_dir / "generation_config.json").is_file():  # from_pretrained reads it too: the model's stop tokens
        policy.generation_config = GenerationConfig.from_pretrained(str(policy_dir))
    # from_pretrained returns modules in eval mode; the PPO update switches to train mode itself
    return ActorCritic(policy.eval(), critic.eval())


def broadcast_initial_weights(model: ActorCritic, policy_dir: str | Path, kind: CriticKind, *, is_main: bool) -> None:
    """Fill the sharded policy, then the sharded critic, from full copies the main process loads one at a time.

    The other ranks receive one tensor at a time and keep their shard of it. The main process holds
    one full fp32 model at a time on its CPU (the policy, freed before the critic is loaded).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from rlmt.models.loading import load_causal_lm

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    loaders = {"policy": lambda: load_causal_lm(policy_dir, device="cpu", dtype="float32"),
               "critic": lambda: load_critic(policy_dir, kind, fresh_head=True)}
    for part, load in loaders.items():
        full = load().state_dict() if is_main else {}
        set_model_state_dict(getattr(model, part), full, options=options)
        del full
