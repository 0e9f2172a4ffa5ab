"""LLM judges: an OpenAI-compatible client (or a local transformers model) behind a persistent
cache, the judge prompts of the judged benchmarks, their reply parsers and cost accounting.

Judging is its own stage: generations are written on a (possibly offline) GPU node and judged
later wherever the judge endpoint is reachable (``rlmt eval judge``).

Imports run one way: :mod:`rlmt.benchmarks` uses this package (the judged benchmarks, their shared
base :mod:`rlmt.benchmarks.judged` and the stage :mod:`rlmt.benchmarks.judging`); nothing here
imports :mod:`rlmt.benchmarks`.
"""

from rlmt.judges.cache import JudgeCache, cache_key  # noqa: F401
from rlmt.judges.client import HTTPJudge, JudgeError, JudgeReply, LocalJudge, make_judge  # noqa: F401
from rlmt.judges.cost import Usage  # noqa: F401
