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

Sampling draws each row's randomness from a generator of its own, seeded by the sampling seed, the
prompt's tokens and the sample's index (:class:`RowSeededSampling`): a prompt's samples do not depend
on which prompts share its batch, its process or its place in the file. So DPO's pair sampling gives
the same samples split over eight processes as in one (as vLLM's per-request seed does).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

from tqdm.auto import tqdm

from rlmt.generation.base import Completion, Generator, Messages, SamplingParams, cut_at_stop
from rlmt.generation.chat import render_prompt_ids

log = logging.getLogger(__name__)


def row_seed(seed: int, prompt_ids: list[int], sample: int) -> int:
    """The seed of one sample's random stream: a digest of (seed, the prompt's token ids, sample index)."""
    digest = hashlib.sha256(f"{seed}|{sample}|{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowSeededSampling:
    """A logits processor that samples with each row's own random stream (the Gumbel-max trick).

    Temperature and top-p shape the scores as transformers' own warpers do; then each row adds Gumbel
    noise drawn from its generator, and ``generate``'s greedy arg-max of the result is a draw from the
    tempered, top-p-truncated distribution. A row draws once per decoding step, so its stream depends
    only on its own seed (rows of one batch start decoding together under left padding).
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        self.seeds = seeds
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        self.generators = None

    def __call__(self, input_ids, scores):
        import torch

        if len(self.seeds) != scores.shape[0]:
            raise ValueError(f"{len(self.seeds)} row seeds for a batch of {scores.shape[0]} rows")
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                               for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
        return scores.float() + gumbel


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
        for batch in tqdm(batches, desc="generate", unit="batch", leave=False,
                          disable=not self.progress or len(batches) < 2):
            outs = self._generate_batch([encoded[i] for i in batch], params, config)
            for k, i in enumerate(batch):
                results[i] = outs[k * params.n:(k + 1) * params.n]
        return results  # type: ignore[return-value]

    def _generation_config(self, params: SamplingParams):
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = params.max_new_tokens
        config.max_length = None
        config.num_return_sequences = 1  # each prompt's row is repeated n times instead (_generate_batch)
        # sampling happens in RowSeededSampling (temperature, top-p, each row's noise), then greedy arg-max
        config.do_sample = False
        config.temperature = 1.0
        config.top_p = 1.0
        config.top_k = None
        config.eos_token_id = self.eos_ids
        config.pad_token_id = self.pad_id
        config.use_cache = True
        config.stop_strings = list(params.stop) or None
        return config

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams, config) -> list[Completion]:
        from transformers import LogitsProcessorList

        torch = self._torch
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        # n rows per prompt, prompt-major (what num_return_sequences does, which greedy arg-max refuses)
        input_ids = padded["input_ids"].repeat_interleave(params.n, dim=0).to(self.model.device)
        attention = padded["attention_mask"].repeat_interleave(params.n, dim=0).to(self.model.device)
        processors = LogitsProcessorList()
        if not params.greedy:  # rows are prompt-major: prompt i's n samples are rows i*n .. i*n+n-1
            seeds = [row_seed(params.seed, ids, k) for ids in batch for k in range(params.n)]
            processors.append(RowSeededSampling(seeds, params.temperature, params.top_p))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                      logits_processor=processors,
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
