"""Token and cost accounting for a judging run.

Prices are USD per million tokens. The config may set them per judge
(``price_input_per_mtok`` / ``price_output_per_mtok``); otherwise a small built-in table of the
judges the paper used applies (list prices when this was written; override them when they move).
Unknown models cost ``None`` rather than a made-up number.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "openai/gpt-4.1": (2.00, 8.00),
    "openai/gpt-4.1-mini": (0.40, 1.60),
}


def price_for(model: str, input_per_mtok: float | None = None,
              output_per_mtok: float | None = None) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens: the configured prices, else the table, else None."""
    if input_per_mtok is not None and output_per_mtok is not None:
        return (input_per_mtok, output_per_mtok)
    return PRICES_PER_MTOK.get(model)


@dataclass
class Usage:
    """Counters of one judging run (cache hits cost nothing and are counted apart)."""

    requests_sent: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price: tuple[float, float] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + int(n))

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price[0] + self.completion_tokens * self.price[1]) / 1e6

    def to_dict(self) -> dict:
        return {"requests_sent": self.requests_sent, "retries": self.retries, "cache_hits": self.cache_hits,
                "failures": self.failures, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd}
