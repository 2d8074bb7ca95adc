"""The dry-run planner against DeepSpeed's own memory estimators, and its output (text and JSON)."""

import io
import json
import re
from contextlib import redirect_stdout

import pytest
import torch

from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
from turing_models.training.plan import (
    GiB,
    ModelShape,
    PlanConfig,
    activation_breakdown,
    deepspeed_states,
    engine_memory,
    load_ds_config,
    make_plan,
    render_plan,
)

stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
stage12 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")

SCALES = ("125m", "1.3b", "13b", "17b")
GPUS = (8, 64, 256)  # 1, 8 and 32 nodes of 8


def meta_shape(scale: str, seq_len: int = 1024) -> ModelShape:
    with torch.device("meta"):
        model = TuringNLGForCausalLM(TuringNLGConfig.from_name(scale))
    return ModelShape.from_model(model, seq_len)


@pytest.fixture(scope="module")
def shapes() -> dict[str, ModelShape]:
    return {scale: meta_shape(scale) for scale in SCALES}


def test_shape_of_17b_is_read_from_the_model(shapes):
    s = shapes["17b"]
    assert s.block_params == 12 * 4256**2 + 13 * 4256  # fused QKV, dense, FFN, two LayerNorms
    assert s.largest_layer == 50304 * 4256  # the (tied) token embedding owns the most parameters
    assert s.tail_params == 50304 * 4256 + 2 * 4256  # embedding + final LayerNorm
    assert s.params == s.layers * s.block_params + s.tail_params + 1024 * 4256


def _ds_gpu_bytes(estimate, **kwargs) -> int:
    return estimate(**kwargs)[1]


@pytest.mark.parametrize("gpus", GPUS)
def test_zero3_states_match_deepspeeds_estimator(shapes, gpus):
    rows = []
    for scale, s in shapes.items():
        for offload_optimizer, offload_params, engine in ((False, False, "zero3"), (True, True, "zero3_offload"),
                                                          (True, False, None)):
            ds = _ds_gpu_bytes(stage3.estimate_zero3_model_states_mem_needs, total_params=s.params,
                               largest_layer_params=s.largest_layer, num_gpus_per_node=8, num_nodes=gpus // 8,
                               cpu_offload=offload_optimizer, cpu_offload_params=offload_params)
            ours = sum(deepspeed_states(s.params, s.largest_layer, gpus, 3, offload_optimizer, offload_params).values())
            if engine is not None:  # the engine rows of the plan carry the same states
                row = engine_memory(s, engine, gpus, 1, True)
                assert row.model_states * GiB == pytest.approx(ours, rel=1e-9)
            rows.append((scale, offload_optimizer, offload_params, ds / GiB, ours / GiB))
            assert ours == pytest.approx(ds, rel=0.05), rows[-1]
    print("\nZeRO-3, %d GPUs: scale, offload optimizer, offload params, DeepSpeed GiB, plan GiB" % gpus)
    for r in rows:
        print("  %-5s %-5s %-5s %8.2f %8.2f" % r)


@pytest.mark.parametrize("gpus", GPUS)
def test_zero2_states_match_deepspeeds_estimator(shapes, gpus):
    for scale, s in shapes.items():
        for offload, engine in ((False, "zero2"), (True, "zero2_offload")):
            ds = _ds_gpu_bytes(stage12.estimate_zero2_model_states_mem_needs, total_params=s.params,
                               num_gpus_per_node=8, num_nodes=gpus // 8, cpu_offload=offload)
            row = engine_memory(s, engine, gpus, 1, True)
            assert row.model_states * GiB == pytest.approx(ds, rel=0.05), (scale, offload, gpus)


def _printed_gpu_gib(fn, **kwargs) -> dict[str, float]:
    """Run one of DeepSpeed's ``*_all_cold`` estimators and read its per-GPU column."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        fn(**kwargs)
    out = {}
    for line in buf.getvalue().splitlines():
        m = re.match(r"\s*[\d.]+GB \|\s*([\d.]+)GB \| (.*)", line)
        if m:
            out[re.sub(r"\s+|OffloadDeviceEnum\.", "", m.group(2).split(", zero_init")[0])] = float(m.group(1))
    return out


def test_the_printed_all_cold_estimates_agree_for_17b(shapes):
    s = shapes["17b"]
    z3 = _printed_gpu_gib(stage3.estimate_zero3_model_states_mem_needs_all_cold, total_params=s.params,
                          largest_layer_params=s.largest_layer, num_gpus_per_node=8, num_nodes=32)
    z2 = _printed_gpu_gib(stage12.estimate_zero2_model_states_mem_needs_all_cold, total_params=s.params,
                          num_gpus_per_node=8, num_nodes=32)
    plan3 = engine_memory(s, "zero3", 256, 1, True).model_states
    plan3_off = engine_memory(s, "zero3_offload", 256, 1, True).model_states
    plan2 = engine_memory(s, "zero2", 256, 1, True).model_states
    print(f"\n17B on 256 GPUs (GiB): ZeRO-3 DeepSpeed {z3['offload_param=none,offload_optimizer=none']:.2f} "
          f"plan {plan3:.2f}; ZeRO-3 offload {z3['offload_param=cpu,offload_optimizer=cpu']:.2f} plan "
          f"{plan3_off:.2f}; ZeRO-2 {z2['offload_optimizer=none']:.2f} plan {plan2:.2f}")
    assert plan3 == pytest.approx(z3["offload_param=none,offload_optimizer=none"], rel=0.05)
    assert plan3_off == pytest.approx(z3["offload_param=cpu,offload_optimizer=cpu"], rel=0.05)
    assert plan2 == pytest.approx(z2["offload_optimizer=none"], rel=0.05)


def test_live_buffers_follow_the_shipped_deepspeed_json(shapes):
    s = shapes["17b"]
    cfg = load_ds_config("zero3")
    row = engine_memory(s, "zero3", 256, 1, True)
    prefetch = min(cfg["stage3_max_live_parameters"] - s.largest_layer, cfg["stage3_prefetch_bucket_size"])
    assert row.buffer_items["prefetch (stage3_prefetch_bucket_size)"] * GiB == pytest.approx(2 * prefetch)
    assert row.buffer_items["reduce bucket (reduce_bucket_size)"] * GiB == pytest.approx(2 * cfg["reduce_bucket_size"])
    smaller = engine_memory(s, "zero3", 256, 1, True, ds_config={
        "stage3_prefetch_bucket_size": 1e7, "reduce_bucket_size": 1e7, "stage3_max_live_parameters": 1e9})
    assert smaller.buffers < row.buffers - 1.5  # the JSON's buckets are what the buffers are made of
    capped = engine_memory(s, "zero3", 256, 1, True, ds_config={"stage3_max_live_parameters": s.largest_layer})
    assert capped.buffer_items["prefetch (stage3_prefetch_bucket_size)"] == 0
    z2 = engine_memory(s, "zero2", 256, 1, True)
    assert load_ds_config("zero2")["overlap_comm"]
    assert z2.buffers * GiB == pytest.approx(4.5 * 2 * (5e8 + 5e8))
    fsdp = engine_memory(s, "fsdp2", 256, 1, True)
    # one block gathered in flight + one prefetched, and in backward its gradient + reduce-scatter input
    assert fsdp.buffer_items["blocks all-gathered (in flight + prefetch)"] * GiB == 2 * 2 * s.block_params
    assert fsdp.buffer_items["tail unit (embedding + head, params + grads)"] * GiB == 2 * 2 * s.tail_params


def test_fsdp2_hsdp_and_tp_trade_memory_for_communication(shapes):
    s = shapes["17b"]
    plan = PlanConfig(gpus=256)
    data = make_plan(s, plan, micro_batch=1, global_batch=512, max_steps=10, checkpointing=True,
                     mixed_precision=True, engine="none", flops_per_token=6 * s.matmul_params, tp=4)
    rows = {r["engine"]: r for r in data["memory"]}
    fsdp, hsdp = rows["FSDP2"], rows["HSDP 32 x 8"]
    tp4, tp8 = rows["TP 4 x FSDP2 64"], rows["TP 8 x FSDP2 32"]
    assert fsdp["weights_gib"] * GiB == pytest.approx(4 * s.params / 256, rel=0.02)  # + dim-0 padding
    assert hsdp["weights_gib"] * GiB == pytest.approx(4 * s.params / 8, rel=0.001)  # sharded within a node only
    assert hsdp["comm_inter_node_gb"] < fsdp["comm_inter_node_gb"] / 5  # ...so far less crosses nodes
    assert hsdp["comm_intra_node_gb"] > 0 and fsdp["comm_intra_node_gb"] == 0
    # TP splits attention / FFN activations; the block inputs kept by checkpointing and the gathered
    # logits stay whole on every rank (no sequence parallelism, no loss parallelism)
    acts = activation_breakdown(s, 1, True, 2, tp=4)
    assert tp4["activations_gib"] * GiB == pytest.approx(acts["blocks"] + acts["recompute"] + acts["outside"])
    assert fsdp["activations_gib"] / 4 < tp4["activations_gib"] < fsdp["activations_gib"]
    assert tp4["logits_gib"] == fsdp["logits_gib"]
    sp = make_plan(s, PlanConfig(gpus=256), micro_batch=1, global_batch=512, max_steps=10, checkpointing=True,
                   mixed_precision=True, engine="none", flops_per_token=1.0, tp=4, sequence_parallel=True,
                   loss_parallel=True)
    sp4 = next(r for r in sp["memory"] if r["configured"])
    assert sp4["activations_gib"] == pytest.approx(fsdp["activations_gib"] / 4, rel=0.01)
    assert sp4["logits_gib"] == pytest.approx(fsdp["logits_gib"] / 4, rel=0.01)
    assert tp4["configured"] and not fsdp["configured"]
    assert tp4["comm_intra_node_gb"] > 0
    assert tp8["notes"] and not tp4["notes"]  # 28 heads: 7 per rank at TP 4, not whole at TP 8
    for r in (tp4, tp8):
        assert r["fits"]["80"]
    text = render_plan(data)
    assert "TP 4 x FSDP2 64" in text and "<- configured" in text and "assumptions:" in text
    hsdp_plan = make_plan(s, plan, micro_batch=1, global_batch=512, max_steps=10, checkpointing=True,
                          mixed_precision=True, engine="none", flops_per_token=1.0, dp_replicate=32)
    assert [r["engine"] for r in hsdp_plan["memory"] if r["configured"]] == ["HSDP 32 x 8"]


def test_dry_run_prints_text_and_json(capsys):
    from _tiny import load_recipe

    recipe = load_recipe("pretrain_nlg")

    def run_dry(argv):
        recipe.main(argv)
        return capsys.readouterr().out

    text = run_dry(["--config", "17b.yaml", "--dry-run"])
    assert "ZeRO-3" in text and "<- configured" in text and "141" in text and "time " in text
    data = json.loads(run_dry(["--config", "17b.yaml", "--dry-run", "--json"]))
    assert data["parameters"] == meta_shape("17b").params
    configured = [r for r in data["memory"] if r["configured"]]
    assert [r["key"] for r in configured] == ["zero3"]
    row = configured[0]
    parts = ("weights_gib", "grads_gib", "optimizer_gib", "buffers_gib", "activations_gib", "logits_gib")
    assert row["total_gib"] == pytest.approx(sum(row[k] for k in parts))
    assert set(row["fits"]) == {"40", "80", "141"} and data["time_seconds"] > 0
    assert data["assumptions"]


@pytest.mark.parametrize("config,layout", [("17b-tp4.yaml", "TP 4 x FSDP2 64"), ("17b-hsdp.yaml", "HSDP 32 x 8")])
def test_17b_variants_plan_their_layout(config, layout, capsys):
    from _tiny import load_recipe

    load_recipe("pretrain_nlg").main(["--config", config, "--dry-run", "--json"])
    data = json.loads(capsys.readouterr().out)
    rows = {r["engine"]: r for r in data["memory"]}
    assert data["layout"] == layout and rows[layout]["configured"]
    assert rows[layout]["fits"]["80"]
    # the TP dimension on 80 GiB GPUs: TP 4 x FSDP 64 and TP 8 x FSDP 32 (not whole heads at 8)
    assert rows["TP 4 x FSDP2 64"]["fits"]["80"] and rows["TP 8 x FSDP2 32"]["fits"]["80"]
    assert rows["TP 8 x FSDP2 32"]["notes"] and not rows["TP 4 x FSDP2 64"]["notes"]
    if layout.startswith("HSDP"):  # less across the network than full sharding, 8x the model states
        assert rows[layout]["comm_inter_node_gb"] < rows["FSDP2"]["comm_inter_node_gb"] / 5
        assert rows[layout]["optimizer_gib"] == pytest.approx(rows["FSDP2"]["optimizer_gib"] * 32, rel=0.02)
    else:  # micro-batch 4 with TP: 4x fewer FSDP all-gathers per step than 17b.yaml's micro-batch 1
        assert data["micro_batch"] == 4 and rows[layout]["comm_seconds_per_step"] < rows["ZeRO-3"]["comm_seconds_per_step"]


def test_plan_warns_when_communication_outruns_compute(shapes):
    s = shapes["17b"]
    data = make_plan(s, PlanConfig(gpus=256), micro_batch=1, global_batch=512, max_steps=10, checkpointing=True,
                     mixed_precision=True, engine="zero3", flops_per_token=6 * s.matmul_params)
    assert any("communication per step" in w for w in data["warnings"])
    fast = make_plan(s, PlanConfig(gpus=256, inter_node_gbps=1000.0), micro_batch=1, global_batch=512,
                     max_steps=10, checkpointing=True, mixed_precision=True, engine="zero3",
                     flops_per_token=6 * s.matmul_params)
    assert not fast["warnings"]
    small = make_plan(s, PlanConfig(gpus=8, gpu_memory_gb=80), micro_batch=1, global_batch=512, max_steps=10,
                      checkpointing=True, mixed_precision=True, engine="zero2", flops_per_token=1.0)
    assert any("GiB per GPU" in w for w in small["warnings"])  # 17B under ZeRO-2 on 8 GPUs does not fit
