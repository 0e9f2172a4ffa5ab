"""Zero models: a base model prompted into a thinking (or answer-only) format, with no SFT.

The paper (§2.2 and App. C; PAPER.md §2.2 here) gives the base tokenizer a fixed Jinja chat
template whose header asks for ``<think> … </think> <response> … </response>`` (think) or only
``<response> … </response>`` (nothink). The instruction lives in the *policy's* template, so the
reward model, which re-templates the user turns with its own template, never sees it.

Conversion, as the reference did it:

- the chat template below (header, then ``User: <query>…</query>`` lines, then ``Assistant:``);
- EOS set to the family's chat EOS (``<|eot_id|>`` for Llama, ``<|im_end|>`` for Qwen);
- ``longcot_config.json`` for :data:`~rlmt.thinking.ZERO_THINK` / :data:`~rlmt.thinking.ZERO_NOTHINK`;
- ``stop.txt`` holding ``</response>``, the stop string of every generation.

Two choices the published prompt leaves open, made here: a completed assistant turn in a
multi-turn conversation is followed by a newline (a single-turn prompt renders exactly as
published), and a system turn's text is placed on its own after the header.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlmt.thinking import STOP_STRING, ZERO_NOTHINK, ZERO_THINK, ThinkingFormat

STOP_FILE = "stop.txt"

ZERO_THINK_HEADER = (
    "A conversation between User and Assistant. Following the User's query, the Assistant first plans a "
    "response, and then provides the response. The internal reasoning process is enclosed within <think> "
    "</think> tags and the response is enclosed within <response> </response> tags, i.e., in the format "
    "<think> reasoning process here </think> <response> response here </response>."
)
ZERO_NOTHINK_HEADER = (
    "A conversation between User and Assistant. The user asks a question, and the assistant provides a "
    "response. The response is enclosed within <response> </response> tags, i.e., <response> response "
    "</response>."
)

# The family's chat EOS, keyed by the config's model_type (the reference keyed it on the path).
CHAT_EOS = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "qwen2_moe": "<|im_end|>"}


def zero_chat_template(header: str) -> str:
    """The fixed Jinja chat template of a zero model with this header."""
    if '"' in header or "\\" in header or "{" in header or "}" in header:
        raise ValueError("a zero-template header must not contain double quotes, backslashes or braces")
    return (
        "{{- bos_token }}"
        '{{- "' + header + '\\n\\n" }}'
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{{- 'User: <query>' + message['content'] | trim + '</query>\\n' }}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{- 'Assistant: ' + message['content'] | trim }}"
        "{%- if not loop.last %}{{- '\\n' }}{%- endif %}"
        "{%- elif message['role'] == 'system' %}"
        "{{- message['content'] | trim + '\\n\\n' }}"
        "{%- else %}"
        "{{- raise_exception('zero template: unknown role ' + message['role']) }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
    )


ZERO_THINK_TEMPLATE = zero_chat_template(ZERO_THINK_HEADER)
ZERO_NOTHINK_TEMPLATE = zero_chat_template(ZERO_NOTHINK_HEADER)


def zero_format(think: bool) -> ThinkingFormat:
    return ZERO_THINK if think else ZERO_NOTHINK


def convert_to_zero(base_dir: str | Path, out_dir: str | Path, think: bool, *, eos_token: str | None = None) -> Path:
    """Write a zero model of `base_dir` to `out_dir`: weights linked (safetensors only), the fixed
    chat template, the family's chat EOS, ``longcot_config.json`` and ``stop.txt``.

    `eos_token` overrides the family's chat EOS (needed for a family not in :data:`CHAT_EOS`).
    """
    from transformers import AutoConfig, AutoTokenizer

    from rlmt.models.prepare import prepare_model

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not base_dir.is_dir():
        raise FileNotFoundError(f"base model directory not found: {base_dir}")
    if out_dir.resolve() == base_dir.resolve():
        raise ValueError("convert_to_zero writes a new directory; --out must differ from --base")
    model_type = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=False).model_type
    eos = eos_token or CHAT_EOS.get(model_type)
    if eos is None:
        raise ValueError(f"{base_dir}: no chat EOS known for model_type {model_type!r} "
                         f"(known: {sorted(CHAT_EOS)}); pass eos_token explicitly")

    fmt = zero_format(think)
    prepare_model(str(base_dir), out_dir, longcot=fmt)
    try:
        tok = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)
        eos_id = tok.convert_tokens_to_ids(eos)
        if eos_id is None or eos_id == tok.unk_token_id or tok.convert_ids_to_tokens(eos_id) != eos:
            raise ValueError(f"{base_dir}: the tokenizer has no token {eos!r} to use as the chat EOS")
        tok.chat_template = ZERO_THINK_TEMPLATE if think else ZERO_NOTHINK_TEMPLATE
        tok.eos_token = eos
        tok.save_pretrained(str(out_dir))
        _add_generation_eos(out_dir, eos_id)
        (out_dir / STOP_FILE).write_text(STOP_STRING + "\n")
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave a half-converted model behind
        raise
    return out_dir


def read_stop_strings(model_dir: str | Path) -> list[str]:
    """The stop strings of a model directory's ``stop.txt`` (one per line), or none."""
    path = Path(model_dir) / STOP_FILE
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def _add_generation_eos(model_dir: Path, eos_id: int) -> None:
    """Stop generation at the chat EOS as well as the base EOS."""
    gen = model_dir / "generation_config.json"
    if not gen.exists():
        return
    cfg = json.loads(gen.read_text())
    cur = cfg.get("eos_token_id")
    ids = set(cur if isinstance(cur, list) else [cur] if cur is not None else []) | {eos_id}
    cfg["eos_token_id"] = sorted(ids)
    gen.write_text(json.dumps(cfg, indent=2) + "\n")
