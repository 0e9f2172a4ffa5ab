"""Rewards: the interface (:mod:`rlmt.rewards.base`), the kinds by name (:mod:`rlmt.rewards.registry`).

WIP: the classifier kind still lives in :mod:`rlmt.rewards.classifier` with its own batch type; the
package's registry wiring follows.
"""

from rlmt.rewards.classifier import AnswerRewardScorer, RewardBatch, length_buckets

__all__ = ["AnswerRewardScorer", "RewardBatch", "length_buckets"]
