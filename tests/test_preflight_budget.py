"""The preflight's vLLM KV rule, runtime and disk arithmetic, against values worked by hand."""

from __future__ import annotations

import pytest

from rlmt.preflight.disk import disk_use
from rlmt.preflight.runtime_estimate import Gpu, decode_seconds, train_flops
from rlmt.preflight.vllm_kv import GIB, kv_budget, kv_bytes_per_token

H100 = Gpu("h100", bf16_tflops=989, hbm_tb_s=3.35, usable_gib=79.6, interconnect_gb_s=450)
LLAMA_8B = dict(params=8_030_261_248, layers=32, kv_heads=8, head_dim=128, hidden=4096, intermediate=14336,
                vocab=128_256)


def test_kv_bytes_per_token_of_llama_and_qwen():
    # Llama-3.1-8B: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes = 131,072 B = 128 KiB
    assert kv_bytes_per_token(32, 8, 128) == 131_072
    # Qwen2.5-7B: 28 x 4 x 128 x 2 x 2 = 57,344 B = 56 KiB
    assert kv_bytes_per_token(28, 4, 128) == 57_344


def test_llamas_own_context_does_not_fit_a_0_4_share_of_an_h100():
    # The defect: TRL let vLLM take Llama-3.1's 131,072-token context.
    # share 0.4 x 79.6 GiB = 31.84 GiB; weights 8,030,261,248 x 2 B = 14.957 GiB;
    # profiling: 4,096 tokens x (2 x 14,336 + 4 x 4,096) x 2 B = 0.34375 GiB, sampler 64 x 128,256 x 8 B = 0.0612 GiB;
    # non-torch 0.5 GiB -> KV budget 31.84 - 14.957 - 0.3438 - 0.0612 - 0.5 = 15.978 GiB
    # one request: 131,072 tokens x 131,072 B = 16.00 GiB > 15.978: vLLM refuses to start.
    b = kv_budget(gpu_bytes=79.6 * GIB, utilization=0.4, max_model_len=131_072, sequences_needed=64, **LLAMA_8B)
    assert b.one_request / GIB == pytest.approx(16.0)
    assert b.kv_budget / GIB == pytest.approx(15.978, abs=0.002)
    assert not b.fits_one_request
    assert b.sequences_at_once == 0
    assert "refuses to start" in b.describe()


def test_the_rollouts_context_fits_and_says_how_many_sequences_run_at_once():
    # max_model_len = 1,024 prompt + 4,096 completion = 5,120 tokens: 5,120 x 131,072 B = 0.625 GiB a request;
    # floor(15.978 / 0.625) = 25 full-length sequences at once, of the 64 a rank samples per rollout.
    b = kv_budget(gpu_bytes=79.6 * GIB, utilization=0.4, max_model_len=5_120, sequences_needed=64, **LLAMA_8B)
    assert b.fits_one_request
    assert b.one_request / GIB == pytest.approx(0.625)
    assert b.sequences_at_once == 25
    assert b.waves == 3  # ceil(64 / 25)


def test_decode_time_reads_weights_and_kv_once_per_step():
    # 10 sequences, all at once, 100 completion tokens after 50 prompt tokens, 1 GB of weights, 1,000 B/token of KV:
    # mean context 50 + 0.5 x 100 = 100 tokens; bytes per step 1e9 + 10 x 100 x 1,000 = 1.001e9;
    # one wave (ceil(10 x 0.5 / 10) = 1) of 100 steps at 3.35e12 x 0.5 B/s: 100 x 1.001e9 / 1.675e12 = 0.059761 s
    s = decode_seconds(H100, 0.5, weight_bytes=1e9, kv_bytes_per_token=1_000, sequences=10, prompt_tokens=50,
                       completion_tokens=100, at_once=10)
    assert s == pytest.approx(100 * 1.001e9 / 1.675e12)
    # 40 sequences with room for 10: ceil(40 x 0.5 / 10) = 2 waves of 10
    s2 = decode_seconds(H100, 0.5, weight_bytes=1e9, kv_bytes_per_token=1_000, sequences=40, prompt_tokens=50,
                        completion_tokens=100, at_once=10)
    assert s2 == pytest.approx(2 * s)


def test_train_flops_count_a_recompute_under_checkpointing():
    assert train_flops(10, 3, checkpointing=False) == 180  # 6 x 10 x 3
    assert train_flops(10, 3, checkpointing=True) == 240   # 8 x 10 x 3


def test_disk_keeps_the_limit_plus_one_in_flight_plus_the_selected_step():
    p = 8_030_261_248
    # ZeRO-3 checkpoint: 16 x P = 128.5 GB; limit 2 -> 2 kept + 1 being written + the protected select step = 4
    use = disk_use("grpo", "zero3", p, save_total_limit=2, saved_steps=5, select_is_fixed=True)
    assert use.per_checkpoint == 16 * p
    assert use.kept == 4
    assert use.total == 4 * 16 * p + 2 * p
    # no limit: every saved step stays
    assert disk_use("grpo", "zero3", p, save_total_limit=None, saved_steps=11, select_is_fixed=True).kept == 11
    # PPO: bf16 policy (2P) + fp32 weights and two moments of policy and critic (24P)
    assert disk_use("ppo", "fsdp2", p, save_total_limit=1, saved_steps=5, select_is_fixed=False).per_checkpoint == 26 * p
