"""Training chat templates shipped with rlmt, and the check that a training template fits a model.

TRL's assistant-only loss needs ``{% generation %}`` markers around what the assistant writes. The
paper's instruct families' own templates have none, and TRL 1.16 has no training version of
Llama-3.1-Instruct's. The files here render, for system / user / assistant turns, exactly the
text of the template they reproduce, with the assistant's content and its end-of-turn token
inside the markers. ``sft.chat_template_path: package:<name>`` selects one.

:func:`template_problems` is the proof a job (and ``rlmt preflight``) runs before any training:
the training template must render the same text as the model's own template on probe
conversations, and its assistant mask must cover exactly each assistant turn's content plus the
end-of-turn token. It uses transformers' own renderer (the one ``apply_chat_template`` uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class TrainingTemplate:
    name: str
    family: str           # models.<name>.family this template is for
    reproduces: str       # the Hugging Face model whose chat_template it renders
    end_of_turn: str      # the token that ends an assistant turn (trained, so the model stops)
    bos_token: str | None


SHIPPED: dict[str, TrainingTemplate] = {
    "llama3_1_training": TrainingTemplate("llama3_1_training", "llama", "meta-llama/Llama-3.1-8B-Instruct",
                                          "<|eot_id|>", "<|begin_of_text|>"),
    "qwen2_5_training": TrainingTemplate("qwen2_5_training", "qwen", "Qwen/Qwen2.5-7B-Instruct",
                                         "<|im_end|>", None),
    # SmolLM2-Instruct is ChatML (family qwen: <|im_end|> ends a turn) with its own default system turn.
    "smollm2_training": TrainingTemplate("smollm2_training", "qwen", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                         "<|im_end|>", None),
}


class TemplateError(ValueError):
    """A chat_template_path that does not resolve, or a training template that does not fit."""


def shipped(ref: str | None) -> TrainingTemplate | None:
    """The shipped template a ``package:<name>`` reference names (None for a plain path or None)."""
    if ref is None or not ref.startswith(PACKAGE_PREFIX):
        return None
    name = ref[len(PACKAGE_PREFIX):]
    if name not in SHIPPED:
        raise TemplateError(f"chat_template_path {ref!r}: no such shipped template; allowed: "
                            f"{sorted(PACKAGE_PREFIX + n for n in SHIPPED)}")
    return SHIPPED[name]


def resolve(ref: str) -> Path:
    """The file a chat_template_path names: ``package:<name>`` (shipped) or a path to a .jinja file."""
    tpl = shipped(ref)
    if tpl is not None:
        path = Path(str(resources.files(__name__).joinpath(f"{tpl.name}.jinja")))
    else:
        path = Path(ref)
    if not path.is_file():
        raise TemplateError(f"chat_template_path {ref!r}: file not found ({path})")
    if path.suffix not in (".jinja", ".j2"):
        raise TemplateError(f"chat_template_path {ref!r}: TRL reads a template file only if it ends in .jinja or .j2")
    return path


def _probes() -> list[list[dict]]:
    think = "<think>\nThe user wants a haiku.\nPlan: 5-7-5.\n</think>\n\nSoft rain on the roof"
    return [
        [{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": think}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there!  "},
         {"role": "assistant", "content": "\nHello! How can I help?\n"}],
        [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
         {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."}],
    ]


def template_problems(original: str, training: str, *, end_of_turn: str, bos_token: str | None = None,
                      eos_token: str | None = None) -> list[str]:
    """Why `training` cannot stand in for `original` in assistant-only SFT (empty: it can).

    For each probe conversation: the two render the same text (with and without the generation
    prompt), and the assistant mask of `training` is exactly one span per assistant turn, holding
    that turn's content as rendered followed by `end_of_turn` and nothing else.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    specials = {"bos_token": bos_token or "", "eos_token": eos_token or end_of_turn}
    problems: list[str] = []
    if not has_markers(training):
        return ["the training template has no {% generation %} markers"]
    for i, chat in enumerate(_probes()):
        try:
            want, _ = render_jinja_template([chat], chat_template=original, **specials)
            got, spans = render_jinja_template([chat], chat_template=training, return_assistant_tokens_mask=True,
                                               **specials)
            want_gp, _ = render_jinja_template([chat[:-1]], chat_template=original, add_generation_prompt=True,
                                               **specials)
            got_gp, _ = render_jinja_template([chat[:-1]], chat_template=training, add_generation_prompt=True,
                                              **specials)
        except Exception as err:  # a template that raises on a plain chat is a problem to report, not a crash
            problems.append(f"probe {i}: rendering failed: {err}")
            continue
        if got[0] != want[0]:
            problems.append(f"probe {i}: renders different text than the model's template "
                            f"(first difference at character {_first_difference(got[0], want[0])})")
        if got_gp[0] != want_gp[0]:
            problems.append(f"probe {i}: the generation prompt differs from the model's template")
        assistants = [m for m in chat if m["role"] == "assistant"]
        masked = [got[0][a:b] for a, b in spans[0]]
        if len(masked) != len(assistants):
            problems.append(f"probe {i}: {len(masked)} masked span(s) for {len(assistants)} assistant turn(s)")
            continue
        for k, (text, message) in enumerate(zip(masked, assistants)):
            if not text.endswith(end_of_turn):
                problems.append(f"probe {i}, assistant turn {k}: the mask does not end with {end_of_turn!r} "
                                "(the model would not learn to stop)")
                continue
            body = text[: -len(end_of_turn)]
            if body not in (message["content"], message["content"].strip()):
                problems.append(f"probe {i}, assistant turn {k}: the mask covers {body!r}, not the turn's content")
    return problems


def has_markers(template: str) -> bool:
    """Whether a chat template wraps something in {% generation %} ... {% endgeneration %}."""
    import re

    return bool(re.search(r"\{%-?\s*generation\s*-?%\}", template)) and "endgeneration" in template


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
