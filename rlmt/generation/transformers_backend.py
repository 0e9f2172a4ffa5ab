"""Generation with a local transformers model: batched, left-padded, KV-cached, CPU or GPU.

Prompts are sorted by length (longest first, so an out-of-memory shows in the first batch) and
cut into batches of ``batch_size`` sequences; the results are put back in prompt order. Left
padding keeps every prompt's last token next to its first generated token, and ``generate``
derives position ids from the attention mask, so a prompt generates the same tokens under greedy
decoding whether it is batched or alone (a test checks this).

EOS ids come from the model's ``generation_config``; stop strings go through transformers'
``stop_strings`` criterion, which ends a sequence at the token that completes the string. Once a
sequence has ended, ``generate`` fills its row with padding while the rest of the batch goes on;
that padding is not counted and not decoded.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from tqdm.auto import tqdm

from rlmt.generation.base import Completion, Generator, Messages, SamplingParams, cut_at_stop
from rlmt.generation.chat import render_prompt_ids

log = logging.getLogger(__name__)


class TransformersGenerator(Generator):
    backend = "transformers"

    def __init__(self, model_dir: str | Path, *, device: str = "auto", batch_size: int = 16, dtype: str | None = "auto",
                 progress: bool = True):
        import torch

        from rlmt.models.loading import load_causal_lm, load_tokenizer, resolve_device

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.chunk_size = batch_size * 4
        self.progress = progress
        self.tokenizer = load_tokenizer(self.model_dir, padding_side="left")
        self.model = load_causal_lm(self.model_dir, device=self.device, dtype=dtype).eval()
        self._torch = torch
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: list[int] = sorted({eos} if isinstance(eos, int) else set(eos or []))
        if not self.eos_ids:
            raise ValueError(f"{model_dir}: neither generation_config nor the tokenizer names an EOS token")
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_ids[0]
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        encoded = [render_prompt_ids(self.tokenizer, p) for p in prompts]
        longest = max((len(e) for e in encoded), default=0)
        if self.max_positions and longest + params.max_new_tokens > self.max_positions:
            log.warning("longest prompt (%d tokens) + max_new_tokens (%d) exceeds the model's %d positions",
                        longest, params.max_new_tokens, self.max_positions)
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        per_batch = max(1, self.batch_size // params.n)  # batch_size counts sequences, n per prompt
        batches = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]
        results: list[list[Completion] | None] = [None] * len(prompts)
        config = self._generation_config(params)
        for b, batch in enumerate(tqdm(batches, desc="generate", unit="batch", leave=False,
                                       disable=not self.progress or len(batches) < 2)):
            outs = self._generate_batch([encoded[i] for i in batch], params, config, seed=params.seed + b)
            for k, i in enumerate(batch):
                results[i] = outs[k * params.n:(k + 1) * params.n]
        return results  # type: ignore[return-value]

    def _generation_config(self, params: SamplingParams):
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = params.max_new_tokens
        config.max_length = None
        config.num_return_sequences = params.n
        config.do_sample = not params.greedy
        config.temperature = params.temperature if not params.greedy else 1.0
        config.top_p = params.top_p if not params.greedy else 1.0
        config.top_k = None
        config.eos_token_id = self.eos_ids
        config.pad_token_id = self.pad_id
        config.use_cache = True
        config.stop_strings = list(params.stop) or None
        return config

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams, config, seed: int) -> list[Completion]:
        torch = self._torch
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.model.device)
        attention = padded["attention_mask"].to(self.model.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                      tokenizer=self.tokenizer if params.stop else None)
        new = out[:, input_ids.shape[1]:].tolist()
        return [self._completion(row, params) for row in new]

    def _completion(self, row: list[int], params: SamplingParams) -> Completion:
        eos_at = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
        if eos_at is not None:
            ids, ended = row[:eos_at + 1], True
        else:
            ids, ended = list(row), False
            if self.pad_id not in self.eos_ids:  # padding after a sequence that ended on a stop string
                while ids and ids[-1] == self.pad_id:
                    ids.pop()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        return Completion(text=text, finish_reason="stop" if ended or stopped else "length", n_tokens=len(ids))

    def close(self) -> None:
        torch = self._torch
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
