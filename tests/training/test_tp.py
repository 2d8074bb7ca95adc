"""Tensor parallelism (DTensor, transformers' TP plans) and TP x FSDP2 on CPU with gloo.

The torchrun tests load a real converted checkpoint: a tiny random ``GPT2LMHeadModel`` and a tiny
random ``BertForMaskedLM`` built and saved with transformers, loaded through the TuringNLG /
TuringNLU classes (conversion on load), then sharded over the ``tp`` mesh by the plan the classes
declare. Tolerances are fp32 reduction-order noise (measured: <= 3e-7 absolute on the logits,
<= 2e-7 relative on the losses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny import run_worker, torchrun_cmd
from turing_models.errors import UsageError
from turing_models.training import parallel as par

WORKER = Path(__file__).with_name("tp_worker.py")
ATOL = 1e-5
RTOL = 1e-5


def torchrun(nproc: int, out: Path, *args: str, timeout: int = 600) -> list[dict]:
    proc = run_worker([*torchrun_cmd(nproc), str(WORKER), *args, "--out", str(out)], out, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((out / f"result_{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random GPT-2 and BERT checkpoints saved by transformers, and their converted copies."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from turing_models.nlg import TuringNLGForCausalLM
    from turing_models.nlu import TuringNLUForMaskedLM

    root = tmp_path_factory.mktemp("tp")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(
        vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )).save_pretrained(root / "gpt2")
    BertForMaskedLM(BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )).save_pretrained(root / "bert")
    TuringNLGForCausalLM.from_pretrained(root / "gpt2").save_pretrained(root / "nlg")
    TuringNLUForMaskedLM.from_pretrained(root / "bert").save_pretrained(root / "nlu")
    return root


# --------------------------------------------------------------------------------------------- #
# In-process: sizes, plans
# --------------------------------------------------------------------------------------------- #
def test_allowed_tp_sizes_per_scale():
    from turing_models.nlg import TuringNLGConfig

    def sizes(name):
        return [t for t in par.allowed_tp_sizes(TuringNLGConfig.from_name(name)) if t <= 16]

    assert sizes("17b") == [1, 2, 4, 7, 14]  # 28 heads: TP 4 is 7 heads per rank, TP 8 is not whole
    assert sizes("8.3b") == [1, 2, 4, 8, 16]
    assert sizes("13b") == [1, 2, 4, 5, 8, 10]
    par.check_tp_size(TuringNLGConfig.from_name("17b"), 4)
    with pytest.raises(UsageError, match="does not divide num_attention_heads=28"):
        par.check_tp_size(TuringNLGConfig.from_name("17b"), 8)


def test_parallel_dims_validation():
    dims = par.ParallelDims(tp=2, dp_shard=2)
    dims.validate(4)
    assert (dims.world_size, dims.dp_size) == (4, 2)
    with pytest.raises(UsageError, match="8 processes but 4"):
        par.ParallelDims(tp=2, dp_shard=2, dp_replicate=2).validate(4)
    with pytest.raises(UsageError, match="needs train.parallel.dp_shard > 1"):
        par.ParallelDims(tp=2, dp_replicate=2).validate(4)
    with pytest.raises(UsageError, match="set it to 1 or more"):
        par.ParallelDims(tp=0).validate(0)

    class Section:  # e.g. the train.parallel section of a recipe config
        tp, dp_shard, dp_replicate = 2, -1, 1

    assert par.ParallelDims.from_config(Section(), world_size=8) == par.ParallelDims(tp=2, dp_shard=4)


def test_train_parallel_config_counts_data_ranks_only():
    from turing_models.training import TrainerConfig
    from turing_models.training.config import ParallelConfig

    cfg = TrainerConfig(global_batch_size=8, micro_batch_size=2, parallel=ParallelConfig(tp=2))
    assert cfg.validate(8) == 1  # 8 processes = tp 2 x 4 data ranks x micro-batch 2
    with pytest.raises(UsageError, match="world size 8"):  # without TP all 8 processes take a batch
        TrainerConfig(global_batch_size=8, micro_batch_size=2).validate(8)
    assert par.data_parallel_rank_for(cfg.parallel, 5, 8) == (2, 4)
    assert par.data_parallel_rank_for(ParallelConfig(), 5, 8) == (5, 8)
    with pytest.raises(UsageError, match="set train.distributed to none"):
        TrainerConfig(global_batch_size=8, micro_batch_size=2, distributed="fsdp2",
                      parallel=ParallelConfig(tp=2)).validate(8)
    with pytest.raises(UsageError, match="global_batch_size=8 is not a multiple"):
        TrainerConfig(global_batch_size=8, micro_batch_size=4, parallel=ParallelConfig(tp=2)).validate(12)


def test_plans_name_modules_of_both_families():
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM

    nlg = TuringNLGForCausalLM(TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=16))
    plan = par.expand_plan(nlg, par.model_tp_plan(nlg))
    assert plan["model.layers.1.attention.qkv.weight"] == "colwise"
    assert plan["model.layers.0.mlp.fc_out"] == "rowwise"
    assert plan["lm_head"] == "colwise_gather_output"
    assert plan["model.embed_tokens.weight"] == "embedding_rowwise"
    assert "lm_head.weight" not in plan  # tied to the embedding: sharded once, shared again

    nlu = TuringNLUForMaskedLM(TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=64,
                                               max_position_embeddings=16))
    plan = par.expand_plan(nlu, par.model_tp_plan(nlu))
    assert plan["encoder.layers.0.attention.out"] == "rowwise"
    assert plan["lm_head.decoder"] == "colwise_gather_output"
    assert plan["encoder.embeddings.word_embeddings.weight"] == "embedding_rowwise"
    with pytest.raises(UsageError, match="names modules it does not have: nowhere"):
        par.expand_plan(nlu, {"nowhere": "colwise"})


def test_17b_plan_on_the_fake_backend():
    """The 17B shapes at TP 4 without 17B of memory: one 17B-wide layer on the meta device, sharded
    by the plan on a fake 4-rank process group. Each rank's slices are whole heads (7 of 28) and a
    quarter of the FFN and of the vocabulary; nothing is allocated."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=4)
    try:
        config = TuringNLGConfig.from_name("17b", num_hidden_layers=1)
        with torch.device("meta"):
            model = TuringNLGForCausalLM(config)
        par.apply_tensor_parallel(model, init_device_mesh("cpu", (4,)))
        attn = model.model.layers[0].attention
        qkv = attn.qkv.weight
        assert isinstance(qkv, DTensor) and qkv.is_meta
        assert tuple(qkv.shape) == (3 * 4256, 4256)
        assert tuple(qkv.to_local().shape) == (3 * 4256 // 4, 4256)  # 7 heads x (q, k, v) x 152
        assert tuple(attn.dense.weight.to_local().shape) == (4256, 4256 // 4)
        assert tuple(model.model.layers[0].mlp.fc_in.weight.to_local().shape) == (4 * 4256 // 4, 4256)
        assert tuple(model.lm_head.weight.to_local().shape) == (50304 // 4, 4256)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert all(p.is_meta for p in model.parameters())
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- #
# torchrun, gloo
# --------------------------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_forward_generate_and_tp_plan_auto(checkpoints, tmp_path):
    results = torchrun(2, tmp_path, "forward", "--gpt2", str(checkpoints / "gpt2"), "--bert",
                       str(checkpoints / "bert"), "--nlg", str(checkpoints / "nlg"), "--nlu",
                       str(checkpoints / "nlu"))
    for rank, r in enumerate(results):
        for key in ("nlg_max_diff", "nlg_masked_max_diff", "nlg_grad_path_max_diff", "nlu_max_diff",
                    "nlu_grad_path_max_diff", "auto_nlg_max_diff", "auto_nlu_max_diff"):
            assert r[key] < ATOL, (rank, key, r[key])
        assert r["nlg_tokens_tp"] == r["nlg_tokens_ref"]
        for family, qkv in (("nlg", "model.layers.0.attention.qkv.weight"),
                            ("nlu", "encoder.layers.0.attention.qkv.weight")):
            for report in (r[family], r[f"auto_{family}"]):
                assert report["full_shapes"][qkv] == [192, 64]
                assert report["shapes"][qkv] == [96, 64]  # 2 of 4 heads, q k v each
                assert report["full_sized_shards"] == []
        assert r["auto_nlg_class"] == "TuringNLGForCausalLM"
        assert r["auto_nlu_class"] == "TuringNLUForMaskedLM"


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_sequence_and_loss_parallel(checkpoints, tmp_path):
    """Sequence parallelism, loss parallelism and both, at TP 2: the loss, every gradient, the eval
    logits and greedy generation equal the unsharded model's, on the converted GPT-2 and on a
    model whose vocabulary is padded (136 rows, 130 real: the padding columns are masked on the
    rank that holds them). The local shapes show the split: the norms get 6 of the 12 tokens, the
    vocabulary-parallel logits half the (padded) vocabulary."""
    results = torchrun(2, tmp_path, "sp", "--gpt2", str(checkpoints / "gpt2"))
    for rank, r in enumerate(results):
        assert len(r) == 6
        for key, case in r.items():
            assert case["loss"] == pytest.approx(case["ref_loss"], rel=RTOL), (rank, key)
            assert case["grad_max_diff"] < ATOL, (rank, key, case["grad_max_diff"])
            assert case["logits_max_diff"] < ATOL, (rank, key, case["logits_max_diff"])
            sp, lp = key.endswith(("_sp", "_splp")), key.endswith("lp")
            assert case["norm_local"][1] == (case["seq"] // 2 if sp else case["seq"]), (rank, key)
            if lp:
                assert case["logits_local"][-1] == case["vocab"] // 2, (rank, key)
            else:  # gathered, padding columns dropped
                assert case["logits_local"][-1] == (130 if key.startswith("padded") else 128), (rank, key)
                assert case["tokens_equal"], (rank, key)


def test_sequence_and_loss_parallel_need_tp_and_a_plan():
    from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM
    from turing_models.training import TrainerConfig
    from turing_models.training.config import ParallelConfig

    for flags in ({"sequence_parallel": True}, {"loss_parallel": True}):
        with pytest.raises(UsageError, match="set train.parallel.tp above 1"):
            TrainerConfig(global_batch_size=2, micro_batch_size=2, parallel=ParallelConfig(tp=1, **flags)).validate(1)
    nlu = TuringNLUForMaskedLM(TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=64,
                                               max_position_embeddings=16))
    with pytest.raises(UsageError, match="declares no sequence-parallel plan"):
        par.model_tp_plan(nlu, sequence_parallel=True)
    with pytest.raises(UsageError, match="declares no loss-parallel plan"):
        par.model_tp_plan(nlu, loss_parallel=True)


def test_sequence_parallel_plan_names_modules():
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    nlg = TuringNLGForCausalLM(TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=16))
    plan = par.expand_plan(nlg, par.model_tp_plan(nlg, sequence_parallel=True, loss_parallel=True))
    assert plan["model.embed_dropout"] == "sequence_scatter"
    assert plan["model.layers.1.input_layernorm"] == "sequence_parallel_stream"
    assert plan["model.layers.1.input_layernorm.weight"] == "sequence_parallel_stream"
    assert plan["model.norm_f"] == "sequence_parallel_stream"
    assert plan["model.layers.0.attention.dense"] == "rowwise_to_sequence"
    assert plan["model.layers.0.attention.qkv"] == "colwise"  # gathers the sequence-sharded stream
    assert plan["lm_head"] == "colwise_loss_parallel"
    par.register_parallel_styles()
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES

    assert all(style in ALL_PARALLEL_STYLES for style in set(plan.values()))


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_x_fsdp2_training_resume_and_export(checkpoints, tmp_path):
    results = torchrun(4, tmp_path, "train", "--tp", "2", "--dp-shard", "2", "--gpt2", str(checkpoints / "gpt2"))
    ref = results[0]["ref_losses"]
    assert len(ref) == 5
    # ranks (dp 0, tp 0), (dp 0, tp 1), (dp 1, tp 0), (dp 1, tp 1): a TP pair shares a data rank
    assert [r["dp_rank"] for r in results] == [0, 0, 1, 1]
    for r in results:
        assert r["losses"] == pytest.approx(ref, rel=RTOL)
        assert r["resumed_losses"] == pytest.approx(r["losses"][3:], rel=1e-6)
        # FSDP2 over TP: qkv rows split by 2 (heads) then by 2 (FSDP) on dim 0
        assert r["shards"]["shapes"]["model.layers.0.attention.qkv.weight"] == [48, 64]
    assert len(results[0]["checkpoint_files"]) == 4
    assert all(name.endswith(".safetensors") for name in results[0]["checkpoint_files"])
    assert results[0]["export_max_diff"] < ATOL


@pytest.mark.slow
@pytest.mark.distributed
def test_trainer_with_train_parallel_matches_one_process(tmp_path):
    """The Trainer itself with ``train.parallel`` tp 2 x dp_shard 2, sequence and loss parallelism
    on (clipping on, activation checkpointing on, a checkpoint every 2 steps) against the same 4
    steps in one process; a fresh 2-D Trainer resumes the step-2 checkpoint to the same losses;
    both exports give the same logits. (tests/training/test_tp.py's train mode covers TP x FSDP2
    without them.)"""
    from _tiny import token_folder

    from turing_models.nlg import TuringNLGForCausalLM

    data = token_folder(tmp_path / "tok")
    single_out = tmp_path / "single"
    cmd = [sys.executable, str(WORKER), "trainer", "--tp", "1", "--dp-shard", "1", "--micro", "4",
           "--data", str(data), "--out", str(single_out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = json.loads((single_out / "result_0.json").read_text())

    results = torchrun(4, tmp_path / "tp", "trainer", "--tp", "2", "--dp-shard", "2", "--micro", "2",
                       "--resume", "--sp", "--lp", "--data", str(data))
    assert [r["data"] for r in results] == [[0, 2], [0, 2], [1, 2], [1, 2]]
    assert single["grad_norm"] > 0.5  # the clipping threshold: every step was clipped
    for r in results:
        assert r["parallel"] and r["step"] == 4 and r["tokens"] == single["tokens"]
        assert r["sp_applied"] and r["lp_applied"] and not (single["sp_applied"] or single["lp_applied"])
        assert r["losses"] == pytest.approx(single["losses"], rel=RTOL)
        assert r["resumed_losses"] == pytest.approx(r["losses"], rel=1e-6)
        assert r["grad_norm"] == pytest.approx(single["grad_norm"], rel=RTOL)
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        a = TuringNLGForCausalLM.from_pretrained(single["final"]).eval()(ids).logits
        b = TuringNLGForCausalLM.from_pretrained(results[0]["final"]).eval()(ids).logits
    assert (a - b).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("tp", [
    # HSDP 2 x 2 alone is also covered across two launchers by test_multinode.py
    pytest.param(1, marks=pytest.mark.skipif(os.environ.get("TURING_TEST_HSDP") != "1",
                                             reason="set TURING_TEST_HSDP=1 (about 40 s on 2 cores)")),
    2,
], ids=["hsdp2x2", "hsdp2x2-tp2"])
def test_hsdp_training(checkpoints, tmp_path, tp):
    """HSDP (2 replicas x FSDP2 2), alone on 4 processes and with TP 2 on 8 (3-D)."""
    results = torchrun(4 * tp, tmp_path, "train", "--tp", str(tp), "--dp-shard", "2", "--dp-replicate", "2",
                       "--gpt2", str(checkpoints / "gpt2"))
    for r in results:
        assert r["dp_size"] == 4
        assert r["losses"] == pytest.approx(r["ref_losses"], rel=RTOL)
        assert r["resumed_losses"] == pytest.approx(r["losses"][3:], rel=1e-6)
    assert results[0]["export_max_diff"] < ATOL
