"""PPO arithmetic on hand-made tensors: GAE, whitening, clipped losses, masking, explained variance."""

from __future__ import annotations

import math

import pytest
import torch

from rlmt.train.ppo_math import (
    entropy_from_logits,
    explained_variance,
    gae,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_level_rewards,
    value_loss,
)


def test_gae_matches_hand_computed_example():
    # gamma = 0.9, lam = 0.8, one sequence of three generated tokens, reward on the last.
    # t=2: delta = 1 - 0.4 = 0.6                         A2 = 0.6
    # t=1: delta = 0.9*0.4 - 0.2 = 0.16                  A1 = 0.16 + 0.72*0.6   = 0.592
    # t=0: delta = 0.9*0.2 - 0.5 = -0.32                 A0 = -0.32 + 0.72*0.592 = 0.10624
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[0.10624, 0.592, 0.6]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.60624, 0.792, 1.0]]), atol=1e-6)


def test_gae_with_paper_defaults_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[1.5, 1.8, 1.6]]))
    assert torch.allclose(ret, torch.full((1, 3), 2.0))


def test_gae_ignores_prompt_and_padding_positions():
    """The same response laid out as [prompt, prompt, r0, r1, r2, pad] gives the same numbers."""
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, -7.0, 0.5, 0.2, 0.4, 123.0]])  # garbage where mask is 0
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.float32)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[0, 0, 0.10624, 0.592, 0.6, 0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0, 0, 0.60624, 0.792, 1.0, 0]]), atol=1e-6)


def test_token_level_rewards_put_score_on_last_generated_token_and_kl_on_every_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float32)
    scores = torch.tensor([2.0, -1.0])
    kl = torch.full((2, 5), 0.5)
    r = token_level_rewards(scores, mask, kl=kl, kl_coef=0.1)
    expected = torch.tensor([[0, -0.05, -0.05, 2 - 0.05, 0], [0, 0, -1 - 0.05, 0, 0]])
    assert torch.allclose(r, expected)
    assert torch.equal(token_level_rewards(scores, mask), torch.tensor([[0, 0, 0, 2.0, 0], [0, 0, -1.0, 0, 0]]))


def test_whitening_uses_only_masked_positions():
    x = torch.tensor([[1.0, 2.0, 3.0, 1000.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    # mean 2, unbiased var 1 -> (-1, 0, 1); the masked entry becomes 0
    assert torch.allclose(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    assert masked_mean(x, torch.zeros_like(mask)) == 0  # empty mask: 0, not NaN


def test_policy_loss_clips_on_the_pessimistic_side():
    old = torch.zeros(1, 4)
    # ratios e^0.5 ~ 1.65 and e^-0.5 ~ 0.61, with positive and negative advantages
    new = torch.tensor([[0.5, 0.5, -0.5, -0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(new, old, adv, mask, clip_ratio=0.2)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    # A>0, r>1+eps: clipped (-1.2);   A<0, r>1: unclipped (+1.65);
    # A>0, r<1-eps: unclipped (-0.61); A<0, r<1-eps: clipped (+0.8)
    expected = (-1.2 + r_hi - r_lo + 0.8) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage_and_has_the_right_gradient():
    logp = torch.zeros(1, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, 3.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_ratio=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0)
    assert torch.allclose(logp.grad, -adv / 3)
    assert stats["policy/clipfrac"].item() == 0 and stats["policy/approx_kl"].item() == pytest.approx(0.0)


def test_masked_tokens_get_no_policy_or_value_gradient():
    logp = torch.randn(2, 5, requires_grad=True)
    values = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    p_loss, _ = policy_loss(logp, logp.detach() + 0.1, torch.randn(2, 5), mask, 0.2)
    v_loss, _ = value_loss(values, values.detach() - 0.3, torch.randn(2, 5), mask, 0.5)
    (p_loss + v_loss).backward()
    assert torch.all(logp.grad[mask == 0] == 0) and torch.all(values.grad[mask == 0] == 0)
    assert torch.all(logp.grad[mask == 1] != 0) and torch.all(values.grad[mask == 1] != 0)


def test_value_loss_clips_large_moves():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[2.0, 0.1]])  # first moved beyond the 0.5 clip, second within
    returns = torch.tensor([[1.0, 1.0]])
    loss, stats = value_loss(new, old, returns, torch.ones(1, 2), cliprange_value=0.5)
    # token 0: unclipped (2-1)^2 = 1, clipped (0.5-1)^2 = 0.25 -> max 1 (no clip counted)
    # token 1: unclipped (0.1-1)^2 = 0.81 = clipped (same value) -> 0.81
    assert loss.item() == pytest.approx(0.5 * (1 + 0.81) / 2)
    assert stats["critic/clipfrac"].item() == 0
    new2 = torch.tensor([[-2.0, 0.0]])  # moved 2.0 toward the return -3: the clip holds it at -0.5
    loss2, stats2 = value_loss(new2, old, torch.tensor([[-3.0, 1.0]]), torch.ones(1, 2), 0.5)
    # token 0: unclipped (-2+3)^2 = 1, clipped (-0.5+3)^2 = 6.25 -> 6.25 (clipped counted)
    assert loss2.item() == pytest.approx(0.5 * (6.25 + 1.0) / 2)
    assert stats2["critic/clipfrac"].item() == pytest.approx(0.5)


def test_entropy_logprobs_and_explained_variance():
    logits = torch.zeros(1, 1, 4)
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    assert logprobs_from_logits(logits, torch.tensor([[2]])).item() == pytest.approx(-math.log(4))
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.5), returns, mask).item() == pytest.approx(0.0)
