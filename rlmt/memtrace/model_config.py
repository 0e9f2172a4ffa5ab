"""A model's configuration without its weights and without a network: where the tracer builds models from.

:func:`model_config` resolves a model source to a ``transformers.PretrainedConfig``, trying in order:

1. a local model directory's ``config.json``;
2. a Hugging Face cache copy of a hub id (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``: ``models--<org>--<name>/snapshots/<rev>/config.json``, the revision
   ``refs/main`` names first);
3. the config shipped for a paper model (``rlmt/resources/model_configs/<name>.json``, named by the
   model's ``config`` key in ``rlmt/resources/model_facts.yaml``; a bare name such as ``llama-3.1-8b``
   names a shipped config directly);
4. a ``tiny:<name>`` member of the offline zoo (:mod:`rlmt.models.tiny`), built as the zoo builds it;
5. a ``gguf:`` source (:mod:`rlmt.models.gguf_import`): the metadata of the GGUF file (no tensors read);

else None: the source is unknown here and the caller says it could not check. Nothing runs remote
code: a config whose ``model_type`` transformers does not know is unknown too.

A sequence-classification reward model listed with ``head: score`` gets its body's config with
``architectures = [<Model>ForSequenceClassification]`` and one label, which is what the tracer builds.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = "model_configs"


def model_config(source: str):
    """``(config, origin)`` for a model source (see the module docstring), or None when unknown.

    `origin` says where the config came from: ``dir:<path>``, ``hf-cache:<path>``,
    ``shipped:<name>``, ``tiny:<name>`` or ``gguf:<path>``.
    """
    local = Path(source).expanduser() / "config.json"
    if not source.startswith(("tiny:", "gguf:")) and local.is_file():
        config = config_from_dict(json.loads(local.read_text()))
        return (config, f"dir:{local}") if config is not None else None
    cached = hf_cache_config_file(source)
    if cached is not None:
        config = config_from_dict(json.loads(cached.read_text()))
        if config is not None:
            return _with_head(config, source), f"hf-cache:{cached}"
    shipped = shipped_config_name(source)
    if shipped is not None:
        return _with_head(shipped_config(shipped), source), f"shipped:{shipped}"
    if source.startswith("tiny:"):
        return tiny_config(source[len("tiny:"):]), source
    if source.startswith("gguf:"):
        return gguf_config(source)
    return None


def config_fingerprint(source: str) -> str:
    """What :func:`model_config` builds the config of `source` from, as a string (a cache key part).

    Follows the same order without importing transformers: a file's SHA-256 (local dir, HF cache,
    shipped config), a tiny-zoo member's spec and sizes, a GGUF file's path, size and mtime.
    """
    local = Path(source).expanduser() / "config.json"
    if not source.startswith(("tiny:", "gguf:")) and local.is_file():
        return f"dir:{_sha256(local.read_bytes())}"
    cached = hf_cache_config_file(source)
    if cached is not None:
        return f"hf-cache:{_sha256(cached.read_bytes())}:{_head(source)}"
    shipped = shipped_config_name(source)
    if shipped is not None:
        text = resources.files("rlmt.resources").joinpath(CONFIG_DIR, f"{shipped}.json").read_bytes()
        return f"shipped:{shipped}:{_sha256(text)}:{_head(source)}"
    if source.startswith("tiny:"):
        from rlmt.models import tiny

        name = source[len("tiny:"):]
        return f"tiny:{name}:{tiny.TINY_MODELS.get(name)}:{tiny.HIDDEN},{tiny.LAYERS},{tiny.HEADS},{tiny.KV_HEADS}," \
               f"{tiny.INTERMEDIATE},{tiny.MAX_POS}"
    if source.startswith("gguf:"):
        from rlmt.models.gguf_import import GGUFSourceError, locate

        try:
            path = locate(source).path
        except GGUFSourceError:
            return f"unknown:{source}"
        stat = path.stat()
        return f"gguf:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"unknown:{source}"


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _head(source: str) -> str:
    return str((_facts()["models"].get(source) or {}).get("head"))


def context_length(source: str) -> int | None:
    """The model's ``max_position_embeddings`` (the longest sequence its config allows), or None when unknown."""
    found = model_config(source)
    if found is None:
        return None
    value = getattr(found[0].get_text_config(), "max_position_embeddings", None)
    return int(value) if value is not None else None


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """KV-cache bytes one token takes: layers x kv_heads x head_dim x 2 (K and V) x `dtype_bytes`."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers * kv_heads * head_dim * 2 * dtype_bytes


def is_sequence_classifier(config) -> bool:
    """Whether the config describes a ``*ForSequenceClassification`` model (a reward model)."""
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


# ----------------------------------------------------------------------------- where configs come from


def config_from_dict(data: dict[str, Any]):
    """A config of the class its ``model_type`` names (no remote code); None for an unknown model type."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return None
    fields = {k: v for k, v in data.items() if k not in ("model_type", "auto_map")}
    return AutoConfig.for_model(model_type, **fields)


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ["HF_HOME"]) if os.environ.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def hf_cache_config_file(source: str) -> Path | None:
    """``config.json`` of a hub id's snapshot in the local Hugging Face cache (the ``main`` revision first)."""
    parts = source.split("/")
    if len(parts) != 2 or not all(parts) or source.startswith((".", "/", "~")):
        return None
    repo = hf_cache_dir() / f"models--{parts[0]}--{parts[1]}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    main = repo / "refs" / "main"
    candidates = [snapshots / main.read_text().strip()] if main.is_file() else []
    candidates += sorted(p for p in snapshots.iterdir() if p.is_dir())
    for snapshot in candidates:
        if (snapshot / "config.json").is_file():
            return snapshot / "config.json"
    return None


@lru_cache(maxsize=1)
def _facts() -> dict[str, Any]:
    return yaml.safe_load(resources.files("rlmt.resources").joinpath("model_facts.yaml").read_text())


def shipped_config_names() -> list[str]:
    folder = resources.files("rlmt.resources").joinpath(CONFIG_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def shipped_config_name(source: str) -> str | None:
    """The shipped config a paper model (hub id in model_facts.yaml) or a bare config name refers to."""
    entry = _facts()["models"].get(source)
    if entry is not None:
        return entry.get("config") or entry["architecture"]
    return source if source in shipped_config_names() else None


def shipped_config(name: str):
    text = resources.files("rlmt.resources").joinpath(CONFIG_DIR, f"{name}.json").read_text()
    config = config_from_dict(json.loads(text))
    if config is None:
        raise ValueError(f"shipped config {name!r} has a model_type transformers does not know")
    return config


def _with_head(config, source: str):
    """A ``head: score`` model of model_facts.yaml as the one-label sequence classifier it is."""
    entry = _facts()["models"].get(source) or {}
    if entry.get("head") != "score" or is_sequence_classifier(config):
        return config
    body = (config.architectures or ["LlamaForCausalLM"])[0].replace("ForCausalLM", "")
    fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    return config.__class__.from_dict({**fields, "architectures": [f"{body}ForSequenceClassification"],
                                       "num_labels": 1})


def tiny_config(name: str):
    """The config of a tiny-zoo member exactly as :func:`rlmt.models.tiny.build_tiny` writes it."""
    from rlmt.models.tiny import TINY_MODELS, build_model, build_tokenizer

    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; allowed: {sorted(TINY_MODELS)}")
    spec = TINY_MODELS[name]
    return build_model(spec, build_tokenizer(spec.arch, spec.vocab_size, spec.chat)).config


def gguf_config(source: str):
    """The config transformers reads from a GGUF file's metadata (the tensors are not loaded)."""
    from transformers import AutoConfig

    from rlmt.models.gguf_import import GGUFSourceError, locate

    try:
        file = locate(source)
    except GGUFSourceError:
        return None
    config = AutoConfig.from_pretrained(str(file.path.parent), gguf_file=file.path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config, f"gguf:{file.path}"
