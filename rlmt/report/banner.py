"""What a report says about itself before any number: whether its models can mean anything.

A config whose every model -- each policy backbone and each reward model, a pipeline-trained reward
model counting as its backbone -- comes from the ``tiny:`` zoo (random weights, tokenizers trained
on a few sentences: :mod:`rlmt.models.tiny`) is a plumbing demo: the run shows that every stage
runs and connects, and its scores, win rates and deltas are noise, however narrow their CIs. The
report of such a config opens with a banner saying so and pointing to the small real-model
experiment. Decided from the config, never from a config's file name.
"""

from __future__ import annotations

from rlmt.rewards import kind_of

TINY_PREFIX = "tiny:"
SMALL_EXPERIMENT_DOC = "docs/small-experiment.md"  # in the rlmt repository
SMALL_EXPERIMENT_CONFIG = "config/small.yaml"


def model_sources(cfg) -> dict[str, str]:
    """``models.<name>`` / ``reward_models.<name>`` -> the source its weights come from.

    A reward model trained by the pipeline (``train``) starts from a backbone of ``models``: its
    weights come from that model's source.
    """
    sources = {f"models.{name}": spec.source for name, spec in cfg.models.items()}
    for name, rm in cfg.reward_models.items():
        if kind_of(rm) != "classifier":  # a judge, a mix or a length term: its weights are other entries'
            continue
        if rm.source is not None:
            sources[f"reward_models.{name}"] = rm.source
        else:
            sources[f"reward_models.{name}"] = cfg.models[rm.train.backbone].source
    return sources


def is_plumbing_demo(cfg) -> bool:
    """True when every model of the config is a ``tiny:`` model (random weights)."""
    sources = model_sources(cfg)
    return bool(sources) and all(s.startswith(TINY_PREFIX) for s in sources.values())


def banner_text(cfg) -> str | None:
    """The banner's text (Markdown) for a plumbing-demo config; None for a config with any real model."""
    if not is_plumbing_demo(cfg):
        return None
    return ("**Plumbing demo: the numbers below are noise.** Every model of this config (`models`, "
            "`reward_models`) is a `tiny:` model: random weights and tokenizers trained on a few sentences "
            "(`rlmt/models/tiny.py`). The run shows that every stage runs and connects; its scores, win rates and "
            "think-minus-no-think deltas measure nothing, whatever their confidence intervals say. For a result on "
            f"a real pretrained model, see the small real-model experiment: `{SMALL_EXPERIMENT_CONFIG}`, "
            f"described in `{SMALL_EXPERIMENT_DOC}` of the rlmt repository.")


def markdown_lines(cfg) -> list[str]:
    """The banner as a Markdown block quote (and a blank line), or nothing."""
    text = banner_text(cfg)
    return [f"> {text}", ""] if text else []
