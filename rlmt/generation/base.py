"""The one interface every generation backend implements.

A backend turns chat prompts into completions: ``generate(prompts, params)`` returns, for every
prompt, ``params.n`` :class:`Completion` objects in prompt order. What differs between backends is
only *how* (a local transformers model, vLLM, an HTTP endpoint); the contract on the text is the
same everywhere, so a benchmark scores a vLLM run and a transformers run the same way:

- the text is decoded without special tokens (no EOS, no padding);
- generation stops at EOS or at the first stop string, and a matched stop string is **kept** in
  the text (``</response>`` must stay visible to :func:`rlmt.thinking.extract`); text after it is
  cut;
- ``finish_reason`` is ``"length"`` only when the token budget ran out before EOS or a stop string;
- ``n_tokens`` counts the generated tokens, including the token that ended generation.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rlmt.config import SamplingConfig
    from rlmt.thinking import ThinkingFormat

FinishReason = Literal["stop", "length"]
Messages = list[dict]


class GenerationError(RuntimeError):
    """Generation could not produce what was asked (a bad prompt, a failing endpoint)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding (``top_p`` is then ignored).

    ``stop`` lists extra strings that end a completion; the model's own stop strings (from its
    ``longcot_config.json``) are added by :func:`rlmt.generation.generate_file`, so callers do
    not need to know them. ``seed`` makes sampling reproducible: a prompt's samples depend on the
    seed and the prompt, not on the batch or process it is generated in (transformers: a random
    stream per row; vLLM: a seed per request).
    """

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 4096
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the object hashable and immutable.
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_stops(self, extra: list[str] | tuple[str, ...]) -> "SamplingParams":
        """These params with `extra` stop strings added (order kept, no duplicates)."""
        return replace(self, stop=tuple(dict.fromkeys([*self.stop, *extra])))

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "n": self.n, "seed": self.seed, "stop": list(self.stop)}

    @classmethod
    def for_format(cls, fmt: "ThinkingFormat", sampling: "SamplingConfig | None" = None, **overrides) -> "SamplingParams":
        """The paper's evaluation settings for a model of format `fmt`.

        Temperature 0.7, top_p 0.95, and 8,192 new tokens for a thinking model or 4,096 otherwise
        (PAPER.md §5), taken from `sampling` (``rlmt.config.SamplingConfig``); the format's stop
        strings are included. `overrides` replace single fields (e.g. ``max_new_tokens``).
        """
        from rlmt.config import SamplingConfig

        sampling = sampling or SamplingConfig()
        budget = sampling.max_new_tokens_think if fmt.thinks else sampling.max_new_tokens_nothink
        values = dict(temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=budget,
                      seed=sampling.seed, stop=tuple(fmt.stop_strings))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    n_tokens: int


class Generator(abc.ABC):
    """A backend. Subclasses implement :meth:`generate`; ``chunk_size`` is how many prompts
    :func:`rlmt.generation.generate_file` hands over at once (between two appends to its file)."""

    backend: str = "?"
    chunk_size: int = 64

    @abc.abstractmethod
    def generate(self, prompts: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for every prompt, in prompt order."""

    def prepare(self, prompts: list[Messages], params: SamplingParams) -> None:
        """Size the backend for the whole job before its first :meth:`generate` (e.g. vLLM's context length).

        :func:`rlmt.generation.generate_file` calls it once with every prompt it will generate. Nothing by default.
        """

    def close(self) -> None:
        """Release what the backend holds (GPU memory, HTTP sessions)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """Cut `text` right after the earliest stop string, keeping it; (text, whether one matched)."""
    best = -1
    best_end = -1
    for stop in stops:
        i = text.find(stop)
        if i >= 0 and (best < 0 or i < best):
            best, best_end = i, i + len(stop)
    if best < 0:
        return text, False
    return text[:best_end], True


def check_messages(messages: object, where: str) -> Messages:
    """A prompt must be a non-empty list of {role, content} strings ending with a user turn."""
    if not isinstance(messages, list) or not messages:
        raise GenerationError(f"{where}: messages must be a non-empty list, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise GenerationError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise GenerationError(f"{where}: messages[{i}].role {m['role']!r} is not system/user/assistant")
    if messages[-1]["role"] != "user":
        raise GenerationError(f"{where}: the last message must be a user turn, got {messages[-1]['role']!r}")
    return messages
