"""Resolve a configured model into ``results/models/<name>/``.

A source is one of:

- ``tiny:<name>``: a member of the offline tiny zoo, built here from its seed;
- a local directory in Hugging Face layout;
- a Hugging Face id (``meta-llama/Llama-3.1-8B``), downloaded on a networked machine into the
  Hugging Face cache (safetensors, configs and tokenizer files only);
- ``gguf:<package>/<file>.gguf`` or ``gguf:<path>.gguf``: real small pretrained weights shipped in a
  GGUF file, dequantised once into safetensors (:mod:`rlmt.models.gguf_import`), cached by the file's
  SHA-256 under ``<out's parent>/.gguf-cache/``.

Weights are linked, not copied (an 8B model is 16 GB); small files are copied so that later
steps may rewrite them. The result always holds safetensors only and a ``longcot_config.json``
when the caller asks for one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlmt.models.gguf_import import PREFIX as GGUF_PREFIX
from rlmt.models.gguf_import import import_gguf
from rlmt.models.loading import check_safetensors
from rlmt.thinking import ThinkingFormat

HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]
LINK_SUFFIXES = (".safetensors",)


def resolve_source(source: str, *, revision: str | None = None, scratch: Path | None = None) -> Path:
    """A local directory holding the model named by `source`."""
    if source.startswith("tiny:"):
        from rlmt.models.tiny import build_tiny

        assert scratch is not None
        return build_tiny(source.split(":", 1)[1], scratch)
    if source.startswith(GGUF_PREFIX):
        assert scratch is not None
        return import_gguf(source, cache=scratch)
    local = Path(source).expanduser()
    if local.exists():
        return local
    if source.count("/") == 1 and not source.startswith((".", "/")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"{source!r} is not a local directory and HF_HUB_OFFLINE=1 forbids a download")
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, allow_patterns=HUB_PATTERNS))
    raise FileNotFoundError(f"model source {source!r} is neither 'tiny:<name>', 'gguf:<file>', a directory, "
                            "nor a Hugging Face id")


def prepare_model(
    source: str,
    out: str | Path,
    *,
    longcot: ThinkingFormat | None = None,
    chat_template_from: str | Path | None = None,
    revision: str | None = None,
) -> Path:
    """Materialize `source` into `out` (safetensors only) and write its longcot_config.json."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if source.startswith("tiny:"):
        resolve_source(source, scratch=tmp)
    else:
        cache = out.parent / ".gguf-cache" if source.startswith(GGUF_PREFIX) else None
        src = resolve_source(source, revision=revision, scratch=cache)
        check_safetensors(src)
        tmp.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if not f.is_file():
                continue
            if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
                continue  # check_safetensors guarantees safetensors exist; pickles are never carried over
            if f.suffix in LINK_SUFFIXES:
                os.symlink(f.resolve(), tmp / f.name)
            else:
                shutil.copy2(f, tmp / f.name)
    check_safetensors(tmp)
    if chat_template_from is not None:
        copy_chat_template(chat_template_from, tmp)
    if longcot is not None and longcot.longcot:
        longcot.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def copy_chat_template(src_dir: str | Path, dst_dir: str | Path) -> None:
    """Give `dst_dir`'s tokenizer the chat template (and chat EOS) of `src_dir`'s tokenizer.

    The paper wraps base Llama's SFT data in Llama-3.1-8B-Instruct's template.
    """
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(str(src_dir), trust_remote_code=False)
    dst = AutoTokenizer.from_pretrained(str(dst_dir), trust_remote_code=False)
    if not src.chat_template:
        raise ValueError(f"{src_dir} has no chat template to copy")
    dst.chat_template = src.chat_template
    dst.eos_token = src.eos_token
    dst.save_pretrained(str(dst_dir))
    gen = Path(dst_dir) / "generation_config.json"
    if gen.exists():
        cfg = json.loads(gen.read_text())
        eos = dst.convert_tokens_to_ids(src.eos_token)
        cur = cfg.get("eos_token_id")
        ids = set(cur if isinstance(cur, list) else [cur] if cur is not None else []) | {eos}
        cfg["eos_token_id"] = sorted(ids)
        gen.write_text(json.dumps(cfg, indent=2))
