"""Distributed engines on CPU: torchrun, 2 processes, gloo.

Each engine trains the same tiny TuringNLG on the same PackedDataset for 4 steps with global batch
4 (2 ranks x micro-batch 2); the single-process reference uses micro-batch 4. Packed windows are
dealt round-robin to ranks, so every step sees the same 4 sequences either way and the loss
curves must agree to fp32 reduction-order noise: relative tolerance 1e-5 (measured: <= 1e-7).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny import token_folder

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(data, out, *args, nproc=None, engine="none", micro=4, timeout=600):
    cmd = [sys.executable, str(WORKER)] if nproc is None else [
        str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(WORKER)]
    cmd += ["--data", str(data), "--out", str(out), "--engine", engine, "--micro", str(micro), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((Path(out) / "result.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_folder(tmp_path_factory.mktemp("dist") / "tok")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return run(data, tmp_path_factory.mktemp("single"), "--steps", "4", "--export")


@pytest.fixture(scope="module")
def deepspeed_warm(data, tmp_path_factory):
    """Build DeepSpeed's CPU comm op once in one process (two ranks building it at once can abort)."""
    pytest.importorskip("deepspeed")
    run(data, tmp_path_factory.mktemp("warm"), "--steps", "1", nproc=1, engine="zero2")


def assert_same_curve(result, reference):
    assert result["world"] == 2
    got, want = torch.tensor(result["losses"]), torch.tensor(reference["losses"])
    assert got.shape == want.shape == (4,)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("engine,expected", [("ddp", "MULTI_CPU"), ("fsdp2", "FSDP")])
def test_torch_engines_match_single_process(engine, expected, data, reference, tmp_path):
    result = run(data, tmp_path, "--steps", "4", nproc=2, engine=engine, micro=2)
    assert result["distributed_type"].endswith(expected)
    assert_same_curve(result, reference)


def test_zero2_matches_single_process(data, reference, deepspeed_warm, tmp_path):
    result = run(data, tmp_path, "--steps", "4", nproc=2, engine="zero2", micro=2)
    assert result["distributed_type"].endswith("DEEPSPEED")
    assert_same_curve(result, reference)


def test_zero3_curve_checkpoint_resume_and_export(data, reference, deepspeed_warm, tmp_path):
    from transformers import AutoModelForCausalLM

    import turing_models.nlg  # noqa: F401  (registers the Auto classes)

    full = run(data, tmp_path / "full", "--steps", "4", "--save-every", "2", "--export", nproc=2,
               engine="zero3", micro=2)
    assert full["distributed_type"].endswith("DEEPSPEED")
    assert_same_curve(full, reference)

    # resume the step-2 checkpoint (ZeRO-3 shards) in a fresh run folder and finish steps 3-4
    ckpt = tmp_path / "full" / "run" / "checkpoints" / "step-00000002"
    assert (ckpt / "trainer_state.json").is_file()
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "run" / "checkpoints", resumed_dir / "run" / "checkpoints")
    shutil.rmtree(resumed_dir / "run" / "checkpoints" / "step-00000004")
    resumed = run(data, resumed_dir, "--steps", "4", "--resume", "auto", nproc=2, engine="zero3", micro=2)
    assert resumed["losses"] == full["losses"]

    # the consolidated export loads in one process and gives the single-process model's logits
    ours = AutoModelForCausalLM.from_pretrained(full["final"]).eval()
    single = AutoModelForCausalLM.from_pretrained(reference["final"]).eval()
    ids = torch.randint(1, 500, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, single(ids).logits, rtol=1e-4, atol=1e-4)

    # consolidating the ZeRO-3 step checkpoints offline (one process, no process group) gives a
    # folder that loads like the trainer's own export: the run's newest step (4) is the final
    # model (through the CLI, as a user runs it); step 2 (through the function) is not
    from turing_models.convert.consolidate import consolidate

    cli = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "recipes" / "convert.py"), "consolidate",
                          str(tmp_path / "full" / "run"), str(tmp_path / "consolidated")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "consolidated deepspeed checkpoint" in cli.stdout and "step-00000004" in cli.stdout
    assert not list(tmp_path.glob(".consolidated.tmp-*"))
    offline = AutoModelForCausalLM.from_pretrained(tmp_path / "consolidated").eval()
    assert sum(p.numel() for p in offline.parameters()) == sum(p.numel() for p in ours.parameters())
    early = consolidate(tmp_path / "full" / "run" / "checkpoints" / "step-00000002", tmp_path / "consolidated-2")
    assert early["format"] == "deepspeed" and early["architecture"] == "TuringNLGForCausalLM"
    at_step2 = AutoModelForCausalLM.from_pretrained(early["out_dir"]).eval()
    with torch.no_grad():
        final_logits = ours(ids).logits
        torch.testing.assert_close(offline(ids).logits, final_logits, rtol=1e-6, atol=1e-6)
        assert (at_step2(ids).logits - final_logits).abs().max() > 1e-3
