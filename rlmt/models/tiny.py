"""The tiny offline model zoo: real architectures, random weights, locally trained tokenizers.

Everything is built deterministically from a seed, with no network, and saved with
``save_pretrained`` as safetensors, so tests and the embedded default load it through the very
``from_pretrained`` calls that load Llama-3.1-8B on a cluster.

Zoo members (``TINY_MODELS``):

==================== ======================= ============================================
name                 class                   tokenizer / chat template
==================== ======================= ============================================
llama-base           LlamaForCausalLM        llama BPE, no chat template (zero path)
llama-instruct       LlamaForCausalLM        llama BPE, Llama-3.1-Instruct structure
qwen-base            Qwen2ForCausalLM        qwen BPE, no chat template (zero path)
qwen-instruct        Qwen2ForCausalLM        qwen BPE, ChatML structure
reward               LlamaForSequenceClass.  its own BPE and an [INST] template
==================== ======================= ============================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlmt.models.templates import (
    CHATML_TEMPLATE,
    LLAMA3_TEMPLATE,
    LLAMA_SPECIALS,
    QWEN_SPECIALS,
    REWARD_SPECIALS,
    REWARD_TEMPLATE,
)

# Strings the thinking formats and templates use; they are put in the tokenizer's training text
# so that they tokenize into a few pieces, as they do in real vocabularies.
FORMAT_TEXT = [
    "<think>\n", "\n</think>\n\n", "<think> ", " </think> ", "<response>", "</response>", "<query>", "</query>",
    "A conversation between User and Assistant.", "User: ", "Assistant:", "system", "user", "assistant",
    "[INST]", "[/INST]", "Answer: ", "\\boxed{", "```python\n", "```\n", "1. ", "- ", "**", "###",
]


@dataclass(frozen=True)
class TinySpec:
    arch: str  # "llama" | "qwen"
    chat: bool
    task: str  # "causal-lm" | "reward"
    vocab_size: int
    seed: int


TINY_MODELS: dict[str, TinySpec] = {
    "llama-base": TinySpec("llama", False, "causal-lm", 2048, 11),
    "llama-instruct": TinySpec("llama", True, "causal-lm", 2048, 12),
    "qwen-base": TinySpec("qwen", False, "causal-lm", 2304, 21),
    "qwen-instruct": TinySpec("qwen", True, "causal-lm", 2304, 22),
    "reward": TinySpec("reward", True, "reward", 1536, 31),
}

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, MAX_POS = 128, 4, 4, 2, 344, 4096


def training_text() -> list[str]:
    """The text the tiny tokenizers learn from: the shipped demo prompts plus the format strings."""
    text: list[str] = list(FORMAT_TEXT)
    with resources.files("rlmt.resources").joinpath("demo_prompts.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            text.extend(m["content"] for m in row["messages"])
    return text


def _specials(arch: str) -> dict:
    return {"llama": LLAMA_SPECIALS, "qwen": QWEN_SPECIALS, "reward": REWARD_SPECIALS}[arch]


def build_tokenizer(arch: str, vocab_size: int, chat: bool):
    """Train a byte-level BPE on the shipped text and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = _specials(arch)
    special_tokens = [t for t in [sp["bos"], sp["base_eos"], sp["chat_eos"], sp["pad"], *sp["extra"]] if t]
    special_tokens = list(dict.fromkeys(special_tokens))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if sp["bos"]:
        # Like Llama 3: the tokenizer itself prepends BOS when add_special_tokens=True.
        bos_id = tok.token_to_id(sp["bos"])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{sp['bos']} $A", pair=f"{sp['bos']} $A {sp['bos']} $B", special_tokens=[(sp["bos"], bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    eos = sp["chat_eos"] if chat else sp["base_eos"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=sp["bos"],
        eos_token=eos,
        pad_token=sp["pad"],
        additional_special_tokens=[t for t in special_tokens if t not in (sp["bos"], eos, sp["pad"])],
        model_max_length=MAX_POS,
        padding_side="left" if arch != "reward" else "right",
        clean_up_tokenization_spaces=False,
    )
    if chat:
        fast.chat_template = {"llama": LLAMA3_TEMPLATE, "qwen": CHATML_TEMPLATE, "reward": REWARD_TEMPLATE}[arch]
    return fast


def build_model(spec: TinySpec, tokenizer):
    """A randomly initialized model of the spec's architecture, seeded."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(spec.seed)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in {tokenizer.eos_token, _specials(spec.arch)["base_eos"]}]
    common = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POS, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=sorted(eos_ids) if len(eos_ids) > 1 else eos_ids[0],
        tie_word_embeddings=False,
    )
    if spec.task == "reward":
        config = LlamaConfig(**common, num_labels=1)
        model = LlamaForSequenceClassification(config)
    elif spec.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = common["eos_token_id"]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_tiny(name: str, out: str | Path) -> Path:
    """Build one zoo member into `out` (safetensors + tokenizer + config)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; allowed: {sorted(TINY_MODELS)}")
    spec = TINY_MODELS[name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.arch, spec.vocab_size, spec.chat)
    model = build_model(spec, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_zoo(out: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build every (or the named) zoo member under `out/<name>/`."""
    out = Path(out)
    return {name: build_tiny(name, out / name) for name in (names or list(TINY_MODELS))}
