"""Distributed engines on CPU: torchrun, 2 processes, gloo.

Each engine trains the same tiny TuringNLG on the same PackedDataset for 4 steps with global batch
4 (2 ranks x micro-batch 2); the single-process reference uses micro-batch 4. Packed windows are
dealt round-robin to ranks, so every step sees the same 4 sequences either way and the loss
curves must agree to fp32 reduction-order noise: relative tolerance 1e-5 (measured: <= 1e-7).
"""

import json
import os
import subprocess
import shutil
import sys
from pathlib import Path

import pytest
import torch

from _tiny import run_worker, token_folder, torchrun_cmd

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("dist_worker.py")
RTOL = 1e-5


def run(data, out, *args, nproc=None, engine="none", micro=4, timeout=600, check=True):
    cmd = [sys.executable] if nproc is None else torchrun_cmd(nproc)
    cmd += [str(WORKER), "--data", str(data), "--out", str(out), "--engine", engine, "--micro", str(micro), *args]
    return run_worker(cmd, out, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_folder(tmp_path_factory.mktemp("dist") / "tok")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {**run(data, out, "--steps", "4", "--export"), "out": out}


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


def test_ddp_matches_single_process(data, reference, tmp_path):
    result = run(data, tmp_path, "--steps", "4", nproc=2, engine="ddp", micro=2)
    assert result["distributed_type"].endswith("MULTI_CPU")
    assert_same_curve(result, reference)


@pytest.fixture(scope="module")
def fsdp2_full(data, tmp_path_factory):
    """FSDP2 on 2 processes, 4 steps, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("fsdp2")
    result = run(data, out, "--steps", "4", "--save-every", "2", nproc=2, engine="fsdp2", micro=2)
    return result, out


def test_fsdp2_matches_single_process(fsdp2_full, reference):
    result, _ = fsdp2_full
    assert result["distributed_type"].endswith("FSDP")
    assert_same_curve(result, reference)


def test_full_disk_on_one_rank_fails_every_rank_in_one_line(data, tmp_path):
    """Rank 0 cannot write the model file (a file-size limit); every rank stops with the same line
    instead of waiting for it, and no temporary folder is left."""
    proc = run(data, tmp_path, "--steps", "4", "--save-every", "2", "--fsize-limit", "60000", nproc=2,
               engine="fsdp2", micro=2, timeout=300, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2, proc.stderr[-3000:]
    assert all("no space left while writing checkpoint" in line for line in lines)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if ".tmp-" in p.name]
    assert not list(checkpoints.glob("step-*"))


def samples_by_step(out) -> dict[int, list]:
    """Every sample all ranks trained on, per optimizer step, in a canonical order."""
    steps: dict[int, list] = {}
    for file in Path(out).glob("samples_rank*.json"):
        for step, ids in json.loads(file.read_text()):
            steps.setdefault(step, []).append(ids)
    return {k: sorted(v) for k, v in sorted(steps.items())}


def resume_at_other_size(data, saved_out, saved_nproc, tmp_path, engine, new_nproc, straight, straight_out):
    """Resume ``saved_out``'s step-2 checkpoint (written by ``saved_nproc`` processes) on ``new_nproc``
    and finish steps 3-4; compare with ``straight``, a run at the new size from the same start:
    losses to fp32 tolerance, and exactly the same samples at every step (none twice, none skipped)."""
    step2 = Path(saved_out) / "run" / "checkpoints" / "step-00000002"
    assert json.loads((step2 / "trainer_state.json").read_text())["world_size"] == saved_nproc
    nproc = None if new_nproc == 1 and engine == "none" else new_nproc
    resumed = run(data, tmp_path, "--steps", "4", "--resume", str(step2), nproc=nproc, engine=engine,
                  micro=4 // new_nproc)
    assert resumed["world"] == new_nproc
    got, want = torch.tensor(resumed["losses"][2:]), torch.tensor(straight["losses"][2:])
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    before = {k: v for k, v in samples_by_step(saved_out).items() if k <= 2}
    after = samples_by_step(tmp_path)
    assert sorted(after) == [3, 4]
    assert {**before, **after} == samples_by_step(straight_out)
    every = [tuple(ids) for step in {**before, **after}.values() for ids in step]
    assert len(every) == 16 and len(set(every)) == 16


@pytest.fixture(scope="module")
def fsdp2_single(data, tmp_path_factory):
    """FSDP2 on 1 process (torchrun), stopped after step 2 of 4 (a checkpoint at step 2)."""
    out = tmp_path_factory.mktemp("fsdp2-single")
    result = run(data, out, "--steps", "4", "--stop-after", "2", nproc=1, engine="fsdp2", micro=4)
    assert result["summary"]["status"] == "interrupted" and result["summary"]["step"] == 2
    return result, out


def test_fsdp2_resumes_1_process_checkpoint_on_2(data, fsdp2_single, fsdp2_full, tmp_path):
    _, single_out = fsdp2_single
    straight, straight_out = fsdp2_full
    resume_at_other_size(data, single_out, 1, tmp_path, "fsdp2", 2, straight, straight_out)


def test_fsdp2_resumes_2_process_checkpoint_on_1(data, fsdp2_full, reference, tmp_path):
    _, full_out = fsdp2_full
    resume_at_other_size(data, full_out, 2, tmp_path, "fsdp2", 1, reference, reference["out"])


def test_zero2_matches_single_process(data, reference, deepspeed_warm, tmp_path):
    result = run(data, tmp_path, "--steps", "4", nproc=2, engine="zero2", micro=2)
    assert result["distributed_type"].endswith("DEEPSPEED")
    assert_same_curve(result, reference)


@pytest.fixture(scope="module")
def zero3_full(data, deepspeed_warm, tmp_path_factory):
    """ZeRO-3 on 2 processes, 4 steps, checkpoints at steps 2 and 4, and the final export."""
    out = tmp_path_factory.mktemp("zero3")
    result = run(data, out, "--steps", "4", "--save-every", "2", "--export", "--ds-native-save", str(out / "native"),
                 nproc=2, engine="zero3", micro=2)
    return result, out


def test_zero3_curve_checkpoint_resume_and_export(data, reference, zero3_full, tmp_path):
    from transformers import AutoModelForCausalLM

    import turing_models.nlg  # noqa: F401  (registers the Auto classes)

    full, full_out = zero3_full
    assert full["distributed_type"].endswith("DEEPSPEED")
    assert_same_curve(full, reference)

    # resume the step-2 checkpoint in a fresh run folder and finish steps 3-4: bit-identical
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full_out / "run" / "checkpoints", resumed_dir / "run" / "checkpoints")
    shutil.rmtree(resumed_dir / "run" / "checkpoints" / "step-00000004")
    resumed = run(data, resumed_dir, "--steps", "4", "--resume", "auto", nproc=2, engine="zero3", micro=2)
    assert resumed["losses"] == full["losses"]

    # the consolidated export loads in one process and gives the single-process model's logits
    ours = AutoModelForCausalLM.from_pretrained(full["final"]).eval()
    single = AutoModelForCausalLM.from_pretrained(reference["final"]).eval()
    ids = torch.randint(1, 500, (2, 16))
    with torch.no_grad():
        final_logits = ours(ids).logits
        torch.testing.assert_close(final_logits, single(ids).logits, rtol=1e-4, atol=1e-4)

    # consolidating offline (one process, no process group, nothing unpickled): the trainer's own
    # newest checkpoint (through the CLI, as a user runs it) and DeepSpeed's own checkpoint of the
    # same model (its pickled shards read under weights_only) both give the final model; step 2 does not
    from turing_models.convert.consolidate import consolidate

    cli = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "recipes" / "convert.py"), "consolidate",
                          str(full_out / "run"), str(tmp_path / "consolidated")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "consolidated plain checkpoint" in cli.stdout and "step-00000004" in cli.stdout
    assert not list(tmp_path.glob(".consolidated.tmp-*"))
    native = consolidate(full_out / "native", tmp_path / "native", config=full["final"])
    assert native["format"] == "deepspeed" and native["architecture"] == "TuringNLGForCausalLM"
    early = consolidate(full_out / "run" / "checkpoints" / "step-00000002", tmp_path / "consolidated-2")
    assert early["format"] == "plain"
    with torch.no_grad():
        for folder in ("consolidated", "native"):
            model = AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
            torch.testing.assert_close(model(ids).logits, final_logits, rtol=1e-6, atol=1e-6)
        at_step2 = AutoModelForCausalLM.from_pretrained(early["out_dir"]).eval()
        assert (at_step2(ids).logits - final_logits).abs().max() > 1e-3


def test_zero3_resumes_1_process_checkpoint_on_2(data, deepspeed_warm, zero3_full, tmp_path_factory, tmp_path):
    single_out = tmp_path_factory.mktemp("zero3-single")
    run(data, single_out, "--steps", "4", "--stop-after", "2", nproc=1, engine="zero3", micro=4)
    straight, straight_out = zero3_full
    resume_at_other_size(data, single_out, 1, tmp_path, "zero3", 2, straight, straight_out)


def test_zero3_resumes_2_process_checkpoint_on_1(data, zero3_full, reference, tmp_path):
    _, full_out = zero3_full
    resume_at_other_size(data, full_out, 2, tmp_path, "zero3", 1, reference, reference["out"])
