"""Generation: the transformers backend on tiny zoo models, resumable generation files, the CLI,
and what can be checked of the vLLM backend without vLLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from rlmt.generation import (
    Completion,
    GenerationError,
    Generator,
    PromptFileError,
    SamplingParams,
    cut_at_stop,
    generate_file,
    load_done_ids,
    make_generator,
    read_generations,
    read_prompts,
    resolve_backend,
)
from rlmt.generation.vllm_backend import completion_from_vllm, vllm_available, vllm_sampling_kwargs
from rlmt.thinking import WARM_NOTHINK, WARM_THINK, ZERO_THINK, ThinkingFormat

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a poem about the sea and the sky and the long road home."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan a trip to Rome with friends."}],
    [{"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "Explain recursion to a child, with an example about stairs."}],
]

# The zero template (PAPER.md §2.2), written here so these tests do not depend on rlmt.models.zero.
ZERO_TEMPLATE = (
    "{{- bos_token }}A conversation between User and Assistant. Following the User's query, the Assistant first "
    "plans a response, and then provides the response. The internal reasoning process is enclosed within "
    "<think> </think> tags and the response is enclosed within <response> </response> tags, i.e., in the format "
    "<think> reasoning process here </think> <response> response here </response>.\n\n"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}User: <query>{{ m['content'] | trim }}</query>\n"
    "{%- elif m['role'] == 'assistant' %}Assistant: {{ m['content'] | trim }}\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}Assistant:{%- endif %}"
)
ZERO_PROMPT = [{"role": "user", "content": "Give me one tip for sleeping better."}]
# What the zero model is taught to write: a thought, an answer, then text that the stop string must cut.
ZERO_TARGET = " <think> plan the answer </think> <response> a short answer </response> and then more words"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def instruct_gen(tiny_zoo):
    gen = make_generator("transformers", tiny_zoo["llama-instruct"], device="cpu", batch_size=4, progress=False)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def zero_model(tiny_zoo, tmp_path_factory):
    """A zero-think model (llama-base + the zero template) trained to write ZERO_TARGET, then EOS.

    A few hundred Adam steps on one sequence make a tiny random model reproduce it under greedy
    decoding, so stop strings and EOS can be tested on text a real model actually generates.
    """
    import torch

    from rlmt.models.loading import load_causal_lm, load_tokenizer

    out = tmp_path_factory.mktemp("zero") / "llama-base-zero-think"
    shutil.copytree(tiny_zoo["llama-base"], out)
    tok = load_tokenizer(out)
    tok.chat_template = ZERO_TEMPLATE
    tok.save_pretrained(out)
    ZERO_THINK.save(out)
    model = load_causal_lm(out, device="cpu")
    prompt_ids = tok(tok.apply_chat_template(ZERO_PROMPT, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    target_ids = tok(ZERO_TARGET, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|end_of_text|>")]
    ids = torch.tensor([prompt_ids + target_ids])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one sequence: a second thread costs more than it brings on a shared machine
    try:
        for _ in range(200):
            step = model(input_ids=ids, labels=labels)
            predicted = step.logits[0, len(prompt_ids) - 1:-1].argmax(-1)
            if bool((predicted == ids[0, len(prompt_ids):]).all()) and step.loss.item() < 0.3:
                break  # greedy decoding now reproduces the target, with a margin
            opt.zero_grad()
            step.loss.backward()
            opt.step()
        else:
            pytest.fail("the tiny zero model did not learn its target in 200 steps")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out, safe_serialization=True)
    return out, len(target_ids)


@pytest.fixture(scope="module")
def zero_gen(zero_model):
    gen = make_generator("transformers", zero_model[0], device="cpu", batch_size=4, progress=False)
    yield gen
    gen.close()


class CountingGenerator(Generator):
    """Wraps a real generator and records how many prompts each call asked for."""

    def __init__(self, inner: Generator, chunk_size: int = 2):
        self.inner = inner
        self.backend = inner.backend
        self.chunk_size = chunk_size
        self.calls: list[int] = []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, params)


# --------------------------------------------------------------------------- params and helpers


def test_importing_generation_loads_neither_torch_nor_vllm():
    code = "import sys, rlmt.generation; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == ["False", "False"]


def test_sampling_defaults_follow_the_thinking_format():
    think = SamplingParams.for_format(WARM_THINK)
    assert (think.temperature, think.top_p, think.max_new_tokens, think.stop) == (0.7, 0.95, 8192, ())
    assert SamplingParams.for_format(WARM_NOTHINK).max_new_tokens == 4096
    zero = SamplingParams.for_format(ZERO_THINK, max_new_tokens=100)
    assert zero.max_new_tokens == 100 and zero.stop == ("</response>",)
    assert SamplingParams(stop=["a"]).with_stops(["b", "a"]).stop == ("a", "b")


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"n": 0}, "n must be"), ({"stop": [""]}, "stop strings"),
])
def test_bad_sampling_params_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_cut_at_stop_keeps_the_earliest_stop_string():
    assert cut_at_stop("a </response> b </end>", ["</end>", "</response>"]) == ("a </response>", True)
    assert cut_at_stop("no stop here", ["</response>"]) == ("no stop here", False)


# --------------------------------------------------------------------------- vLLM without vLLM


def test_vllm_parameter_mapping():
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=123, n=4, seed=7,
                                             stop=["</response>"]))
    assert kw == {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 123, "seed": 7, "stop": ["</response>"],
                  "include_stop_str_in_output": True, "skip_special_tokens": True}
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0, top_p=0.5))
    assert greedy["temperature"] == 0 and greedy["top_p"] == 1.0 and greedy["stop"] is None
    c = completion_from_vllm("x </response> y", [1, 2, 3], "stop", ("</response>",))
    assert c == Completion("x </response>", "stop", 3)
    assert completion_from_vllm("abc", [1, 2], "length", ()).finish_reason == "length"
    assert completion_from_vllm("abc", [1], None, ()).finish_reason == "stop"


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_without_vllm_auto_falls_back_and_vllm_fails_clearly(tiny_zoo):
    assert resolve_backend("auto", device="cuda") == "transformers"
    assert resolve_backend("auto", base_url="http://x/v1") == "openai"
    with pytest.raises(GenerationError, match="vllm package is not installed"):
        make_generator("vllm", tiny_zoo["llama-instruct"])
    with pytest.raises(ValueError, match="unknown generation backend 'tgi'"):
        make_generator("tgi", tiny_zoo["llama-instruct"])


# --------------------------------------------------------------------------- transformers backend


def _parted_at_a_near_tie(gen, prompt, a: str, b: str, tol: float = 1e-4) -> bool:
    """Greedy texts of one prompt from two batch shapes may part only where the two tokens' logits
    are within `tol` (round-off between padded shapes decides such a tie; nothing else may)."""
    import torch

    from rlmt.generation.chat import render_prompt_ids

    ids_a = gen.tokenizer(a, add_special_tokens=False)["input_ids"]
    ids_b = gen.tokenizer(b, add_special_tokens=False)["input_ids"]
    k = next((j for j, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), None)
    if k is None:
        return False
    with torch.inference_mode():
        logits = gen.model(torch.tensor([render_prompt_ids(gen.tokenizer, prompt) + ids_a[:k]])).logits[0, -1]
    return abs(float(logits[ids_a[k]] - logits[ids_b[k]])) <= tol and float(logits.max() - logits[ids_a[k]]) <= tol


def test_batched_greedy_equals_one_at_a_time(instruct_gen):
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = instruct_gen.generate(PROMPTS, params)
    instruct_gen.batch_size = 1
    try:
        single = instruct_gen.generate(PROMPTS, params)
    finally:
        instruct_gen.batch_size = 4
    for prompt, [b], [s] in zip(PROMPTS, batched, single):
        assert b == s or _parted_at_a_near_tie(instruct_gen, prompt, b.text, s.text), (b, s)
    # the tie check says no to a real divergence (prompt 0's greedy text against prompt 1's)
    assert not _parted_at_a_near_tie(instruct_gen, PROMPTS[0], batched[0][0].text, batched[1][0].text)
    # A random model never says EOS in 12 tokens: every completion ran out of budget.
    for [c] in batched:
        assert c.finish_reason == "length" and c.n_tokens == 12
        assert "<|eot_id|>" not in c.text and "<|reserved_special_token_5|>" not in c.text
    assert len({c[0].text for c in batched}) > 1


def test_stop_string_stops_and_is_kept(instruct_gen):
    free = instruct_gen.generate(PROMPTS[1:2], SamplingParams(temperature=0, max_new_tokens=16))[0][0].text
    stop = free[6:10]
    assert stop.strip()
    [[c]] = instruct_gen.generate(PROMPTS[1:2], SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))
    assert c.text == free[:free.index(stop) + len(stop)]
    assert c.text.endswith(stop) and c.finish_reason == "stop" and c.n_tokens < 16


def test_sampling_is_seeded_and_gives_n_samples(instruct_gen):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, n=3, seed=5)
    a = instruct_gen.generate(PROMPTS[:2], params)
    b = instruct_gen.generate(PROMPTS[:2], params)
    assert [len(x) for x in a] == [3, 3] and a == b
    assert len({c.text for c in a[0]}) > 1


@pytest.mark.parametrize("dtype,want", [("auto", "float32"), ("bfloat16", "bfloat16"), ("float32", "float32")])
def test_the_configs_generation_dtype_reaches_the_local_backend(tiny_zoo, dtype, want):
    """generation.dtype: the weights a local model generates with (auto on CPU: fp32), and the batch size."""
    from rlmt.config import GenerationConfig
    from rlmt.generation.job import local_generator_options

    options = local_generator_options(GenerationConfig(dtype=dtype, batch_size=7), "cpu")
    gen = make_generator("transformers", tiny_zoo["llama-instruct"], **options)
    assert str(next(gen.model.parameters()).dtype) == f"torch.{want}" and gen.batch_size == 7
    [[out]] = gen.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=3, temperature=0.0))
    assert out.finish_reason in ("stop", "length")


def test_a_model_without_chat_template_is_refused(tiny_zoo):
    gen = make_generator("transformers", tiny_zoo["llama-base"], device="cpu", progress=False)
    with pytest.raises(GenerationError, match="has no chat template"):
        gen.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))


def test_zero_model_stops_at_end_delimiter_and_keeps_it(zero_gen, zero_model):
    _, n_target = zero_model
    params = SamplingParams.for_format(ZERO_THINK, temperature=0, max_new_tokens=n_target + 10)
    [[c]] = zero_gen.generate([ZERO_PROMPT], params)
    assert c.text == ZERO_TARGET[:ZERO_TARGET.index("</response>") + len("</response>")]
    assert c.finish_reason == "stop" and c.n_tokens < n_target - 1
    # Without the stop string the model writes on until EOS: a 'stop' finish decoded without the EOS token.
    [[free]] = zero_gen.generate([ZERO_PROMPT], SamplingParams(temperature=0, max_new_tokens=n_target + 10))
    assert free.text == ZERO_TARGET and free.finish_reason == "stop" and free.n_tokens == n_target
    # Cut short by the budget: 'length'.
    [[short]] = zero_gen.generate([ZERO_PROMPT], SamplingParams(temperature=0, max_new_tokens=5, stop=["</response>"]))
    assert short.finish_reason == "length" and short.n_tokens == 5


# --------------------------------------------------------------------------- generation files


def test_generate_file_rows_for_a_zero_model(zero_model, zero_gen, tmp_path):
    model_dir, n_target = zero_model
    items = [("a", ZERO_PROMPT), ("b", PROMPTS[0])]
    out = generate_file(model_dir, items, tmp_path / "gen.jsonl",
                        SamplingParams(temperature=0, max_new_tokens=n_target + 5), generator=zero_gen, progress=False)
    rows = read_generations(out)
    assert [r["id"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert a["output"].strip() == "<think> plan the answer </think> <response> a short answer </response>"
    assert (a["answer"], a["thought"], a["answer_found"], a["well_formed"], a["issues"]) == \
        ("a short answer", "plan the answer", True, True, [])
    assert a["finish_reason"] == "stop" and a["prompt"] == ZERO_PROMPT and a["sample"] == 0
    meta = json.loads((tmp_path / "gen.jsonl.meta.json").read_text())
    assert meta["params"]["stop"] == ["</response>"] and meta["format"]["longcot_delimiter"] == "<response>"


def test_generate_file_resumes_only_missing_ids(instruct_gen, tiny_zoo, tmp_path):
    items = [(f"p{i}", p) for i, p in enumerate(PROMPTS)]
    out = tmp_path / "gen.jsonl"
    params = SamplingParams(temperature=0, max_new_tokens=6)
    counting = CountingGenerator(instruct_gen, chunk_size=2)
    generate_file(tiny_zoo["llama-instruct"], items[:3], out, params, generator=counting, progress=False)
    assert counting.calls == [2, 1]
    first = read_generations(out)

    # One prompt per call from here on: p4 is generated alone now and again after the crash below, so that its two
    # greedy texts come from the same batch shape (a batch of two pads p4 and may part at a near tie of logits).
    counting.calls.clear()
    counting.chunk_size = 1
    generate_file(tiny_zoo["llama-instruct"], items, out, params, generator=counting, progress=False)
    assert counting.calls == [1, 1]  # only p3 and p4
    rows = read_generations(out)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3", "p4"] and rows[:3] == first

    # A crash cut the last line short: that id is dropped and generated again, nothing else.
    data = out.read_bytes()
    out.write_bytes(data[:-25])
    counting.calls.clear()
    generate_file(tiny_zoo["llama-instruct"], items, out, params, generator=counting, progress=False)
    assert counting.calls == [1]
    assert read_generations(out) == rows

    counting.calls.clear()
    generate_file(tiny_zoo["llama-instruct"], items, out, params, generator=counting, progress=False)
    assert counting.calls == []

    with pytest.raises(GenerationError, match="other settings"):
        generate_file(tiny_zoo["llama-instruct"], items, out, SamplingParams(temperature=0, max_new_tokens=7),
                      generator=counting, progress=False)


def test_corrupt_middle_line_and_bad_items_are_errors(tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(GenerationError, match=r"gen.jsonl:2: not valid JSON; the file is corrupt"):
        load_done_ids(out, 1)
    good = [{"role": "user", "content": "x"}]
    with pytest.raises(GenerationError, match="duplicate id 'a'"):
        generate_file("unused", [("a", good), ("a", good)], tmp_path / "x.jsonl", fmt=WARM_NOTHINK, generator=object())
    with pytest.raises(GenerationError, match="last message must be a user turn"):
        generate_file("unused", [("a", [{"role": "assistant", "content": "x"}])], tmp_path / "x.jsonl",
                      fmt=WARM_NOTHINK, generator=object())


def test_read_prompts_jsonl_and_parquet(tmp_path):
    import polars as pl

    good = tmp_path / "p.jsonl"
    good.write_text('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n\n'
                    '{"id": "x", "messages": [{"role": "user", "content": "yo"}], "source": "s"}\n')
    assert read_prompts(good) == [("1", [{"role": "user", "content": "hi"}]), ("x", [{"role": "user", "content": "yo"}])]
    pq = tmp_path / "p.parquet"
    pl.DataFrame({"id": ["a"], "messages": [[{"role": "user", "content": "hey"}]]}).write_parquet(pq)
    assert read_prompts(pq) == [("a", [{"role": "user", "content": "hey"}])]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{oops\n'
                   '{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{"id": "c", "messages": []}\n'
                   '{"messages": []}\n')
    with pytest.raises(PromptFileError) as err:
        read_prompts(bad)
    text = str(err.value)
    assert "4 malformed row(s)" in text
    for expected in ("bad.jsonl:2: not valid JSON", "bad.jsonl:3: duplicate id 'a'", "bad.jsonl:4: messages must be",
                     "bad.jsonl:5: a row needs 'id' and 'messages'"):
        assert expected in text


# --------------------------------------------------------------------------- CLI


def test_cli_generate_writes_rows_and_one_mlflow_run(tiny_zoo, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from rlmt.cli import app

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": p}) + "\n" for i, p in enumerate(PROMPTS[:3])))
    out = tmp_path / "eval" / "generations.jsonl"
    args = ["eval", "generate", "--model", str(tiny_zoo["llama-instruct"]), "--prompts", str(prompts),
            "--out", str(out), "--backend", "transformers", "--max-new-tokens", "5", "--bench", "demo-if", "--model-name", "tiny-llama"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 rows, 3 hit the token limit" in result.output
    rows = read_generations(out)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and all(r["n_tokens"] == 5 for r in rows)

    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id],
                               filter_string="tags.`rlmt.stage` = 'generate'")
    assert run.info.status == "FINISHED" and run.info.run_name == "generate:tiny-llama:demo-if"
    assert run.data.params["model_name"] == "tiny-llama"
    assert run.data.metrics["n_rows"] == 3 and run.data.metrics["n_length"] == 3
    assert run.data.params["sampling.max_new"] == "5" and run.data.params["format"] == "warm-nothink"
    assert "rlmt.output.generations" in run.data.tags

    bad = CliRunner().invoke(app, [*args[:5], str(tmp_path / "missing.jsonl"), *args[6:]])
    assert bad.exit_code == 2 and "--prompts: file not found" in bad.output
    no_model = CliRunner().invoke(app, ["eval", "generate", "--model", str(tmp_path / "nope"), "--prompts", str(prompts),
                                        "--out", str(tmp_path / "g.jsonl")])
    assert no_model.exit_code == 2 and "model directory not found" in no_model.output
