"""Rendering chat prompts with the policy's own chat template.

The local backends (transformers, vLLM) feed token ids, not text: the template already writes the
BOS token where the family wants one, so encoding the rendered text again with special tokens
would put a second BOS in front (Llama 3's tokenizer prepends one by itself).
"""

from __future__ import annotations

from rlmt.generation.base import GenerationError, Messages, check_messages


def render_prompt(tokenizer, messages: Messages) -> str:
    """The text the model continues: the template applied with the assistant generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; a base model must be "
            "prepared first (a zero template or a chat_template_from model) before it can answer chat prompts")
    text = tokenizer.apply_chat_template(check_messages(messages, "prompt"), tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some versions return a list for batched input
        raise GenerationError(f"chat template rendered {type(text).__name__}, expected str")
    return text


def render_prompt_ids(tokenizer, messages: Messages) -> list[int]:
    """Token ids of :func:`render_prompt`, without adding special tokens a second time."""
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])
