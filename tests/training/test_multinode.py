"""Two machines through the real launcher: two ``torchrun --nnodes 2 --node_rank {0,1}`` launchers
on this host, one process each, rendezvous at ``127.0.0.1:PORT``, gloo.

Each engine trains the tiny TuringNLG for 4 steps with global batch 4 (2 nodes x micro-batch 2);
the single-process reference uses micro-batch 4 and sees the same 4 sequences per step, so the
loss curves agree to fp32 reduction-order noise (relative 1e-5). HSDP runs two processes per
node: FSDP2 shards within each node and replicates across the two (``train.parallel.dp_replicate``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny import TORCHRUN, free_port, launch_env, run_worker, token_folder

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("dist_worker.py")
RTOL = 1e-5


def worker_args(data, out, engine, micro, *extra):
    return [str(WORKER), "--data", str(data), "--out", str(out), "--engine", engine, "--micro", str(micro),
            *extra]


def run_single(data, out) -> dict:
    return run_worker([sys.executable, *worker_args(data, out, "none", 4)], out)


def run_two_nodes(data, out, engine: str, nproc: int = 1, *extra: str, timeout: int = 600) -> dict:
    """Start the two launchers as two machines would, and wait for both."""
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = [str(TORCHRUN), "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", str(nproc),
               "--rdzv-endpoint", f"127.0.0.1:{port}", *worker_args(data, out, engine, 2 // nproc, *extra)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=launch_env()))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, text in zip(procs, outputs):
        assert proc.returncode == 0, text[-3000:]
    return json.loads((Path(out) / "result.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_folder(tmp_path_factory.mktemp("multinode") / "tok")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return run_single(data, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("engine,expected", [("fsdp2", "FSDP"), ("zero3", "DEEPSPEED")])
def test_two_launchers_train_like_one_process(engine, expected, data, reference, tmp_path):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    result = run_two_nodes(data, tmp_path, engine)
    assert result["world"] == 2 and result["distributed_type"].endswith(expected)
    print(f"\n{engine} on 2 launchers: {result['losses']}\none process:        {reference['losses']}")
    # one process per node: node ranks 0 and 1, each the only local rank of its node
    assert sorted(tuple(p) for p in result["placements"]) == [(0, 0, 1, 0), (1, 0, 1, 1)]
    got, want = torch.tensor(result["losses"]), torch.tensor(reference["losses"])
    assert got.shape == want.shape == (4,)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_hsdp_replicates_across_the_two_launchers(data, reference, tmp_path):
    result = run_two_nodes(data, tmp_path, "none", 2, "--dp-replicate", "2")
    assert result["world"] == 4 and result["model_sharded"]
    assert sorted(tuple(p) for p in result["placements"]) == [(0, 0, 2, 0), (0, 1, 2, 1), (1, 0, 2, 2), (1, 1, 2, 3)]
    got, want = torch.tensor(result["losses"]), torch.tensor(reference["losses"])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
