"""The FLOPs formula, parameter counting, the memory planner and the optimizer set-up."""

import math

import pytest
import torch

from turing_models.training.config import TrainerConfig
from turing_models.training.flops import count_matmul_params, flops_per_token, measure_matmul_peak, mfu
from turing_models.training.optim import build_optimizer, decay_groups, lr_lambda
from turing_models.training.plan import ModelShape, memory_per_gpu

from _tiny import tiny_model


def test_formula_by_hand():
    # 6N + 12 L H Q T for N=1e6, L=2, H=4, Q=8, T=16
    assert flops_per_token(10**6, 2, 4, 8, 16) == 6e6 + 12 * 2 * 4 * 8 * 16
    assert flops_per_token(10**6, 2, 4, 8, 16, training=False) == 2e6 + 4 * 2 * 4 * 8 * 16
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)


def test_matmul_params_skip_positions_and_count_tied_once():
    model = tiny_model()
    c = model.config
    total = sum(p.numel() for p in model.parameters())  # tied head counted once by parameters()
    assert count_matmul_params(model) == total - c.max_position_embeddings * c.hidden_size


def test_cpu_peak_is_measured_and_positive():
    peak = measure_matmul_peak()
    assert 1e8 < peak < 1e14


def test_zero_stages_shard_what_they_should():
    shape = ModelShape(params=10**9, matmul_params=10**9, layers=24, hidden=2048, heads=16, vocab=50304, seq_len=2048)
    gib = 1024**3
    rows = {s: memory_per_gpu(shape, 8, s, False, 1, True) for s in (0, 1, 2, 3)}
    assert rows[0].optimizer == pytest.approx(8e9 / gib)  # DDP under autocast: fp32 weights, Adam m and v
    assert rows[1].optimizer == pytest.approx(12e9 / 8 / gib) and rows[1].grads == pytest.approx((2e9 + 4e9 / 8) / gib)
    assert rows[2].grads == pytest.approx(6e9 / 8 / gib) and rows[2].weights == pytest.approx(2e9 / gib)
    assert rows[3].weights == pytest.approx(2e9 / 8 / gib)
    offload = memory_per_gpu(shape, 8, 3, True, 1, True)
    assert offload.optimizer == 0 and offload.weights == 0
    no_ckpt = memory_per_gpu(shape, 8, 3, False, 1, False)
    assert no_ckpt.activations > rows[3].activations * 5


def test_no_decay_on_norms_biases_embeddings():
    model = tiny_model()
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(".weight" in n and "norm" not in n and "embed" not in n for n in decayed)
    assert model.get_input_embeddings().weight in no_decay["params"]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    opt = build_optimizer(model, TrainerConfig(lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)


def test_schedules():
    cfg = TrainerConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    lin = lr_lambda(TrainerConfig(max_steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.0))
    assert lin(60) == pytest.approx(0.5)
    assert lr_lambda(TrainerConfig(schedule="constant", warmup_steps=0))(999) == 1.0
