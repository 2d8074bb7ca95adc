"""A 256-rank FSDP2 sharding rehearsal of Turing-NLG 17B, without GPUs.

The model is built on the meta device and handed to the real :class:`Trainer` (FSDP2 through
Accelerate: ``transformer_based_wrap`` over the decoder blocks, activation checkpointing on) in a
process that joined torch's *fake* process group as rank 0 of 256 (the backend torchtitan's
``comm.mode=fake_backend`` dry runs use: collectives return at once, nothing is allocated). The
sharding FSDP2 chose is then read back and checked against the planner: per-rank sharded
parameter bytes, the largest unsharded unit and the number of FSDP units.

DeepSpeed ZeRO-3 runs on the same fake group (DeepSpeed takes the process group that is already
initialised, on its CPU accelerator), but it needs real tensors: the partitions are copied out of
a materialised model. So its rehearsal uses the 17B shape with 2 of its 78 blocks (uninitialised
memory, no weight init): every block partitions alike, so the per-block figures are exact.

The trainer's ``train.parallel`` layouts (TP 4 x FSDP2 64, HSDP 32 x 8) are rehearsed the same way.

Run by hand: ``python tests/training/test_rehearsal.py fsdp2|zero3|parallel [world_size] [scale]
[layers | tp dp_replicate]`` prints the JSON.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORLD = 256


def join_fake_group(world: int) -> None:
    """Make this process rank 0 of a fake process group of ``world`` ranks."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    os.environ.update(WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="8",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="29599")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def rehearse(world: int = WORLD, scale: str = "17b") -> dict:
    """In this process: join a fake group of ``world`` ranks, wrap the model as the trainer does."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    join_fake_group(world)
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training import Trainer, TrainerConfig

    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name(scale))
    full = {name: p.numel() for name, p in model.named_parameters()}
    config = TrainerConfig(distributed="fsdp2", precision="bf16", activation_checkpointing=True,
                           micro_batch_size=1, global_batch_size=world, progress=False, tensorboard=False,
                           run_name="rehearsal", output_dir="/nonexistent")
    data = [{"input_ids": torch.zeros(8, dtype=torch.long)}] * 2
    trainer = Trainer(model, data, config=config, run_dir="/nonexistent/rehearsal")
    wrapped = trainer.model

    groups = {}  # FSDP parameter groups (units), keyed by identity
    for name, module in wrapped.named_modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                groups.setdefault(id(group), (name or "<root>", group))
    units = []
    for name, group in groups.values():
        unsharded = sum(fp._orig_size.numel() for fp in group.fsdp_params)
        local = sum(fp.sharded_param._local_tensor.numel() * fp.sharded_param._local_tensor.element_size()
                    for fp in group.fsdp_params)
        units.append({"name": name, "params": unsharded, "local_bytes": local,
                      "reshard_after_forward": group.post_forward_mesh_info is not None})
    checkpointed = [getattr(b, "gradient_checkpointing", False) for b in trainer.unwrapped_model.model.layers]
    params = list(wrapped.parameters())
    return {
        "world_size": dist.get_world_size(), "backend": dist.get_backend(),
        "parameters": sum(full.values()),
        "sharded_bytes_per_rank": sum(u["local_bytes"] for u in units),
        "fsdp_units": len(units),
        "largest_unit": max(units, key=lambda u: u["params"]),
        "units_kept_unsharded_after_forward": [u["name"] for u in units if not u["reshard_after_forward"]],
        "all_dtensors": all(type(p).__name__ == "DTensor" for p in params),
        "param_dtype": str(params[0].dtype), "device": str(params[0].device),
        "blocks_checkpointed": all(checkpointed) and len(checkpointed) > 0,
    }


def rehearse_parallel(world: int = WORLD, scale: str = "17b", tp: int = 4, dp_replicate: int = 1) -> dict:
    """``train.parallel`` (TP x FSDP2, HSDP) through the trainer on the fake group, on the meta device."""
    import torch
    import torch.distributed as dist

    join_fake_group(world)
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training import Trainer, TrainerConfig
    from turing_models.training.config import ParallelConfig

    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name(scale))
    dp_shard = world // tp // dp_replicate
    config = TrainerConfig(distributed="none", precision="bf16", activation_checkpointing=True,
                           micro_batch_size=1, global_batch_size=world // tp, progress=False, tensorboard=False,
                           run_name="rehearsal", output_dir="/nonexistent",
                           parallel=ParallelConfig(tp=tp, dp_shard=dp_shard, dp_replicate=dp_replicate))
    trainer = Trainer(model, [{"input_ids": torch.zeros(8, dtype=torch.long)}] * 2, config=config,
                      run_dir="/nonexistent/rehearsal")
    params = list(trainer.model.parameters())
    local = [p._local_tensor if hasattr(p, "_local_tensor") else p for p in params]
    qkv = trainer.unwrapped_model.model.layers[0].attention.qkv.weight
    return {
        "world_size": dist.get_world_size(), "backend": dist.get_backend(), "tp": tp, "dp_shard": dp_shard,
        "dp_replicate": dp_replicate, "local_bytes": sum(t.numel() * t.element_size() for t in local),
        "devices": sorted({str(t.device) for t in local}),
        "mesh": list(getattr(qkv, "device_mesh").mesh_dim_names or ()),
        "qkv_local_shape": list(qkv._local_tensor.shape), "qkv_shape": list(qkv.shape),
    }


def rehearse_zero3(world: int = WORLD, scale: str = "17b", layers: int = 2) -> dict:
    """DeepSpeed ZeRO-3 through the trainer on the fake group: the partitions of a ``layers``-block
    model of ``scale``'s shape, built in uninitialised memory."""
    import torch
    import torch.distributed as dist

    join_fake_group(world)
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training import Trainer, TrainerConfig

    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name(scale, num_hidden_layers=layers))
    model = model.to_empty(device="cpu")
    model.tie_weights()
    config = TrainerConfig(distributed="zero3", precision="bf16", activation_checkpointing=True,
                           micro_batch_size=1, global_batch_size=world, progress=False, tensorboard=False,
                           run_name="rehearsal", output_dir="/nonexistent")
    trainer = Trainer(model, [{"input_ids": torch.zeros(8, dtype=torch.long)}] * 2, config=config,
                      run_dir="/nonexistent/rehearsal")
    engine = trainer.model
    optimizer = trainer.optimizer
    while not hasattr(optimizer, "fp32_partitioned_groups_flat") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    params = list(engine.module.parameters())
    embedding = model.model.embed_tokens.weight
    return {
        "world_size": dist.get_world_size(), "backend": dist.get_backend(), "engine": type(engine).__name__,
        "optimizer": type(optimizer).__name__, "layers": layers,
        "parameters": sum(p.ds_numel for p in params),
        "partition_numel": sum(p.ds_tensor.numel() for p in params),
        "partition_dtype": str(params[0].ds_tensor.dtype),
        "fp32_master_numel": sum(t.numel() for t in optimizer.fp32_partitioned_groups_flat),
        "embedding_partition_numel": embedding.ds_tensor.numel(), "embedding_numel": embedding.ds_numel,
        "persistent_numel": sum(p.ds_numel for p in params if p.ds_persist),
    }


def _run(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rehearsal():
    return _run("fsdp2", str(WORLD), "17b")


def test_fsdp2_shards_17b_over_256_fake_ranks_as_planned(rehearsal):
    import torch

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training.plan import GiB, ModelShape, engine_memory

    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name("17b"))
    shape = ModelShape.from_model(model, 1024)
    row = engine_memory(shape, "fsdp2", WORLD, 1, True)
    r = rehearsal
    print(f"\n17B FSDP2 rehearsal on {r['world_size']} fake ranks: {r['sharded_bytes_per_rank'] / GiB:.3f} GiB of "
          f"sharded fp32 parameters per rank (plan {row.weights:.3f}), {r['fsdp_units']} FSDP units, largest "
          f"unit {r['largest_unit']['name']} {r['largest_unit']['params'] / 1e6:.1f} M parameters, kept "
          f"unsharded after forward: {r['units_kept_unsharded_after_forward']}")
    assert r["world_size"] == WORLD and r["backend"] == "fake"
    assert r["parameters"] == shape.params
    assert r["all_dtensors"] and r["device"] == "meta" and r["param_dtype"] == "torch.float32"
    assert r["blocks_checkpointed"]
    # per-rank sharded parameters: the planner's FSDP2 weights (fp32 / 256), dim-0 padding included
    assert r["sharded_bytes_per_rank"] == pytest.approx(row.weights * GiB, rel=1e-6)
    assert r["sharded_bytes_per_rank"] >= 4 * shape.params / WORLD
    # one unit per block, the tail (embedding + final norm + tied head) and the root (positions)
    assert r["fsdp_units"] == shape.layers + 2
    assert r["largest_unit"]["params"] == max(shape.block_params, shape.tail_params) == shape.block_params
    assert r["largest_unit"]["name"].startswith("model.layers.")
    # the planner's gather buffers assume the tail stays unsharded through backward
    assert any("embed_tokens" in n for n in r["units_kept_unsharded_after_forward"])


@pytest.mark.parametrize("tp,dp_replicate,layout", [(4, 1, "TP 4 x FSDP2 64"), (1, 32, "HSDP 32 x 8")])
def test_tp_and_hsdp_layouts_shard_17b_as_planned(tp, dp_replicate, layout):
    from turing_models.training.plan import GiB, ModelShape, engine_memory

    r = _run("parallel", str(WORLD), "17b", str(tp), str(dp_replicate))
    shape = ModelShape.from_model(_meta_17b(), 1024)
    key, shard = ("fsdp2", None) if dp_replicate == 1 else ("hsdp", WORLD // dp_replicate)
    row = engine_memory(shape, key, WORLD, 1, True, tp=tp, shard_group=shard)
    print(f"\n{layout} on {r['world_size']} fake ranks (mesh {r['mesh']}): {r['local_bytes'] / GiB:.3f} GiB of fp32 "
          f"parameters per rank (plan {row.weights:.3f}); qkv {r['qkv_shape']} -> {r['qkv_local_shape']} per rank")
    assert r["backend"] == "fake" and r["devices"] == ["meta"]  # nothing full-size was materialised
    assert r["local_bytes"] == pytest.approx(row.weights * GiB, rel=1e-9)  # TP split + FSDP2 dim-0 padding
    rows_per_rank = -(-3 * 4256 // tp // (WORLD // tp // dp_replicate))
    assert r["qkv_local_shape"] == [rows_per_rank, 4256]


@pytest.mark.slow
def test_deepspeed_zero3_partitions_a_17b_shaped_model_over_256_fake_ranks():
    import torch

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training.plan import GiB, ModelShape, engine_memory

    r = _run("zero3", str(WORLD), "17b", "2")
    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name("17b", num_hidden_layers=2))
    shape = ModelShape.from_model(model, 1024)
    row = engine_memory(shape, "zero3", WORLD, 1, True)
    full = ModelShape.from_model(_meta_17b(), 1024)
    per_block = (r["partition_numel"] - (shape.params - 2 * shape.block_params) / WORLD) / 2
    extrapolated = 2 * (r["partition_numel"] + (full.layers - 2) * per_block)
    full_row = engine_memory(full, "zero3", WORLD, 1, True)
    print(f"\nZeRO-3 on {r['world_size']} fake ranks, 17B shape with 2 blocks: {r['partition_numel']:,} "
          f"{r['partition_dtype'][6:]} elements per rank (plan {row.weights * GiB / 2:,.0f}); 78 blocks: "
          f"{extrapolated / GiB:.3f} GiB of 16-bit weights per rank (plan {full_row.weights:.3f})")
    assert r["world_size"] == WORLD and r["backend"] == "fake" and r["engine"] == "DeepSpeedEngine"
    assert r["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and r["partition_dtype"] == "torch.bfloat16"
    assert r["parameters"] == shape.params
    assert r["embedding_partition_numel"] * WORLD == r["embedding_numel"]  # 50304 x 4256 splits evenly
    # 16-bit weight partitions (2 bytes x P / G) and the fp32 master partitions (4 bytes x P / G)
    assert r["partition_numel"] * 2 == pytest.approx(row.weights * GiB, rel=0.001)
    assert r["fp32_master_numel"] == r["partition_numel"]
    assert extrapolated == pytest.approx(full_row.weights * GiB, rel=0.001)


def _meta_17b():
    import torch

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    with torch.device("meta"):
        return TuringNLGForCausalLM(TuringNLGConfig.from_name("17b"))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "fsdp2"
    world = int(sys.argv[2]) if len(sys.argv) > 2 else WORLD
    scale = sys.argv[3] if len(sys.argv) > 3 else "17b"
    if mode == "zero3":
        result = rehearse_zero3(world, scale, int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    elif mode == "parallel":
        result = rehearse_parallel(world, scale, int(sys.argv[4]), int(sys.argv[5]))
    else:
        result = rehearse(world, scale)
    print(json.dumps(result))
