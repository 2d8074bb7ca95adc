"""A checkpoint counts only when it verifies: walk-back, damaged files, stale temporaries, engines
that cannot start as launched. In-process, on a tiny model (seconds)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from turing_models.errors import UsageError
from turing_models.io import write_manifest
from turing_models.training import Trainer, TrainerConfig

from _tiny import SEQ, tiny_model


def make_trainer(data, out, steps=4, **kw):
    from turing_models.data import PackedDataset

    cfg = TrainerConfig(run_name="run", output_dir=str(out), max_steps=steps, global_batch_size=4,
                        micro_batch_size=2, lr=3e-3, warmup_steps=2, log_every=1, progress=False,
                        tensorboard=False, keep_last=10, peak_flops=1e12, **kw)
    return Trainer(tiny_model(), PackedDataset(data, "train", seq_len=SEQ, seed=0), config=cfg)


@pytest.fixture(scope="module")
def straight(tokens, tmp_path_factory):
    """4 steps, a checkpoint after every step: the reference losses and the checkpoints."""
    out = tmp_path_factory.mktemp("straight")
    trainer = make_trainer(tokens, out, save_every_steps=1)
    trainer.fit()
    return trainer.losses, out / "run" / "checkpoints"


def copy_run(checkpoints: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(checkpoints, dest / "run" / "checkpoints")
    return dest / "run" / "checkpoints"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_resume_auto_walks_back_past_damaged_checkpoints(tokens, straight, tmp_path, caplog):
    losses, checkpoints = straight
    ckpts = copy_run(checkpoints, tmp_path)
    truncate(ckpts / "step-00000004" / "model.safetensors")
    truncate(ckpts / "step-00000003" / "optimizer.safetensors")
    resumed = make_trainer(tokens, tmp_path)
    with caplog.at_level(logging.WARNING):
        resumed.fit(resume="auto")
    text = caplog.text
    assert "step-00000004" in text and "model.safetensors has" in text and "the manifest says" in text
    assert "step-00000003" in text and "optimizer.safetensors has" in text
    assert "pytorch_model.bin" not in text
    assert resumed.losses == losses  # resumed from step 2, bit-identical to the straight run


def test_deleted_weights_are_named_as_missing(tokens, straight, tmp_path, caplog):
    losses, checkpoints = straight
    ckpts = copy_run(checkpoints, tmp_path)
    (ckpts / "step-00000004" / "model.safetensors").unlink()
    resumed = make_trainer(tokens, tmp_path)
    with caplog.at_level(logging.WARNING):
        resumed.fit(resume="auto")
    assert "model.safetensors is missing" in caplog.text and "pytorch_model.bin" not in caplog.text
    assert resumed.losses == losses


def test_naming_a_damaged_checkpoint_is_one_line(tokens, straight, tmp_path):
    _, checkpoints = straight
    ckpts = copy_run(checkpoints, tmp_path)
    truncate(ckpts / "step-00000004" / "model.safetensors")
    with pytest.raises(UsageError) as err:
        make_trainer(tokens, tmp_path).fit(resume=str(ckpts / "step-00000004"))
    message = str(err.value)
    assert "\n" not in message and "model.safetensors has" in message and "--resume auto" in message


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "optimizer.json", "rng_0.json",
                                  "scheduler.json", "data_0.json"])
def test_damaged_file_with_a_forged_manifest_is_one_line(tokens, straight, tmp_path, name):
    """Even when the manifest was rewritten to match, a damaged file is a UsageError naming it."""
    _, checkpoints = straight
    ckpts = copy_run(checkpoints, tmp_path)
    step = ckpts / "step-00000004"
    truncate(step / name, 0.3)
    write_manifest(step)
    with pytest.raises(UsageError) as err:
        make_trainer(tokens, tmp_path).fit(resume="auto")
    assert name in str(err.value) and "\n" not in str(err.value)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tokens, straight, tmp_path):
    losses, checkpoints = straight
    ckpts = copy_run(checkpoints, tmp_path)
    run_dir = ckpts.parent
    dead = _dead_pid()
    stale = [ckpts / f".step-00000005.tmp-{dead}-0123abcd", ckpts / ".tmp-step-00000005",
             run_dir / f".tmp-final-{dead}", run_dir / f".final.tmp-{dead}-89abcdef"]
    for path in stale:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * 1000)
    live = ckpts / f".step-00000006.tmp-{os.getpid()}-0123abcd"  # a writer that still runs
    live.mkdir()
    resumed = make_trainer(tokens, tmp_path, steps=5)
    resumed.fit(resume="auto")
    assert not any(p.exists() for p in stale)
    assert live.is_dir()
    assert resumed.step == 5 and resumed.losses[:4] == losses


def test_a_checkpoint_holds_no_pickle_and_a_manifest(straight):
    from turing_models.io import verify_manifest

    _, checkpoints = straight
    step = checkpoints / "step-00000004"
    names = sorted(p.name for p in step.iterdir())
    assert names == ["data_0.json", "manifest.json", "model.safetensors", "optimizer.json", "optimizer.safetensors",
                     "rng_0.json", "rng_0.safetensors", "scheduler.json", "trainer_state.json"]
    assert verify_manifest(step) is None


def test_deepspeed_engine_without_a_launcher_names_the_torchrun_command(tokens, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", ["recipes/pretrain_nlg.py", "--config", "tiny", "--train.distributed", "zero3"])
    with pytest.raises(UsageError) as err:
        make_trainer(tokens, tmp_path, distributed="zero3")
    assert str(err.value).endswith(
        "run: torchrun --nproc_per_node 1 recipes/pretrain_nlg.py --config tiny --train.distributed zero3")


@pytest.mark.parametrize("env,engine", [({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "zero3"),
                                        ({"ACCELERATE_USE_DEEPSPEED": "true",
                                          "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "fsdp2")])
def test_engine_conflicting_with_accelerate_launch_is_refused(tokens, tmp_path, monkeypatch, env, engine):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError, match=f"train.distributed={engine} conflicts with the accelerate launch config"):
        make_trainer(tokens, tmp_path, distributed=engine)


def test_engine_agreeing_with_accelerate_launch_leaves_it_to_the_launch_config(monkeypatch):
    from turing_models.training.config import TrainerConfig
    from turing_models.training.engine import check_launch

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert check_launch(TrainerConfig(distributed="zero3")) == "none"  # 17b.yaml under the zero3 YAML
    with pytest.raises(UsageError, match="train.distributed=zero2 conflicts"):
        check_launch(TrainerConfig(distributed="zero2"))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert check_launch(TrainerConfig(distributed="fsdp2")) == "none"


def test_resize_arithmetic_refuses_a_position_it_cannot_continue():
    from turing_models.training.checkpointer import translate_position

    assert translate_position(16, 2, 2, "x") == 4
    assert translate_position(16, 4, 1, "x") == 4
    with pytest.raises(UsageError, match="cannot continue exactly"):
        translate_position(6, 2, 2, "x")
