"""LLM judges: an OpenAI-compatible client (or a local transformers model) behind a persistent
cache, the judge prompts of the judged benchmarks, their reply parsers and cost accounting.

Judging is its own stage: generations are written on a (possibly offline) GPU node and judged
later wherever the judge endpoint is reachable (``rlmt eval judge``).
"""

from rlmt.judges.cache import JudgeCache, cache_key  # noqa: F401
from rlmt.judges.client import HTTPJudge, JudgeError, JudgeReply, LocalJudge, make_judge  # noqa: F401
from rlmt.judges.cost import Usage  # noqa: F401
