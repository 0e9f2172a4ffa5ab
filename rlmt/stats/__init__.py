"""Statistics shared by stages that must not import each other (benchmarks and report).

A module here reads plain numbers and returns numbers: no files, no MLflow, no model code, and
never an ``rlmt`` stage package. :mod:`rlmt.stats.arena_bt`: Arena-Hard's battle rows, the
style-controlled Bradley-Terry fit and its bootstraps. :mod:`rlmt.stats.bootstrap`: the percentile
bootstrap of a mean. :mod:`rlmt.stats.length_control`: the length-controlled win rate and its bootstrap.
:mod:`rlmt.stats.paired_rewards`: win, tie or loss from two rewards.
"""
