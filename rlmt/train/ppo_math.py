"""The arithmetic of actor-critic PPO, as small pure tensor functions.

Everything here works on ``[batch, time]`` tensors plus a ``mask`` of the same shape that is 1 on
the tokens the policy generated and 0 on prompt and padding tokens. Only masked positions ever
contribute to a mean, a variance or a loss, so prompt and padding tokens get no gradient and do not
bend the statistics. Keeping the math apart from the loop lets tests check each formula on
hand-made tensors (``tests/test_ppo_math.py``).

Conventions follow the reference code (verl): GAE with (gamma, lam), advantages whitened over the
batch, PPO's clipped surrogate for the policy, a clipped squared error for the critic, and
token-mean aggregation (every generated token of the mini-batch weighs the same).
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked positions; an all-zero mask gives 0 rather than NaN."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, as verl does)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale to unit variance (and zero mean) over the masked positions; masked-out entries become 0.

    Whitening advantages keeps the policy step size independent of the reward model's scale.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_level_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                        kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards: the sequence score on the last generated token, minus ``kl_coef * kl`` on every token.

    The reward model judges the finished answer, so its score belongs to the final token (for a
    response that ends in EOS or ``</response>``, the token that ends the answer). ``kl`` is the
    per-token log-ratio ``log pi(a|s) - log pi_ref(a|s)`` when a KL penalty is used.
    """
    rewards = torch.zeros_like(mask, dtype=scores.dtype)
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * kl * mask
    last = last_token_index(mask)
    has_tokens = mask.sum(-1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last[has_tokens]] += scores[has_tokens]
    return rewards


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last masked position (0 for an empty row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the masked positions; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}, with V and A beyond
    the last generated token equal to 0. Masked-out positions are skipped: the recursion carries the
    next *generated* token's value and advantage across them, so padding (or a hole in the mask)
    changes nothing. returns = A + V are the critic's regression targets. With gamma = lam = 1 (the
    paper's setting) A_t = (sum of future rewards) - V_t.
    """
    batch, length = rewards.shape
    mask = mask.to(rewards.dtype)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(length)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        next_value = values[:, t] * m + next_value * (1 - m)
        next_advantage = advantage * m + next_advantage * (1 - m)
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_ratio: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean over tokens of max(-A * r, -A * clip(r, 1-eps, 1+eps)).

    Taking the pessimistic (larger) loss removes the incentive to push the ratio r = pi/pi_old
    outside [1-eps, 1+eps] in the direction the advantage favours.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        # k3 estimator of KL(pi_old || pi): non-negative and low-variance.
        "policy/approx_kl": masked_mean(torch.exp(-log_ratio) - 1 + log_ratio, mask).detach(),
        "policy/ratio_mean": masked_mean(ratio, mask).detach(),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (V_clip - R)^2).

    V_clip = V_old + clip(V - V_old, -c, c) keeps the critic from moving far from the values that
    produced this batch's advantages in one update.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    stats = {"critic/clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask).detach()}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical distribution the logits define."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the logits, gathered per position (float32 for a stable softmax)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over the masked positions: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_var(returns - values, mask) / var_returns
