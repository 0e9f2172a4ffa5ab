"""One paired outcome from two rewards of the same prompt: win, tie or loss.

Shared by the reward win rate (a policy against its reference) and the report's head-to-head (a think
cell against its no-think twin), so that both count a win, a tie and a loss by the same rule.
"""

from __future__ import annotations

DEFAULT_TIE_TOLERANCE = 1e-4


def compare_rewards(policy: float, reference: float, tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> float:
    """1 (win), 0 (loss) or 0.5 (tie: the rewards are within ``tie_tolerance`` of each other)."""
    margin = policy - reference
    if margin > tie_tolerance:
        return 1.0
    if margin < -tie_tolerance:
        return 0.0
    return 0.5
