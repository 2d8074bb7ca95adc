"""Nothing a user hands us is unpickled: a ``__reduce__`` payload planted in every file that resume,
consolidate, ``from_pretrained`` and ``convert.py`` read never runs; and the tree holds no
``torch.load`` but the one in :func:`turing_models.io.safe_torch_load`, and no pickle load."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from turing_models.errors import UsageError
from turing_models.io import write_manifest

from _tiny import tiny_model

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # writing a pickle is harmless; reading one is not
        torch.save({"state": Payload(marker)}, fh)


# ---------------------------------------------------------------------------- the tree

# spelled in pieces so that this file does not match itself
FORBIDDEN = [re.escape("torch." + "load("), r"\bpickle\." + "(?:load|loads|Unpickler)" + r"\b",
             r"\bUnpickler\(", "weights_only=" + "False", r"\bimport (?:dill|cloudpickle)\b",
             "load_" + "custom_state", "load_" + "state" + r"\(\s*str", r"\.load_" + r"state\(self\.run"]


def test_no_torch_load_or_pickle_load_outside_the_io_layer():
    offenders = []
    for folder in ("turing_models", "recipes", "benchmarks", "tests", "turing_kernels"):
        for file in (REPO / folder).rglob("*.py"):
            text = file.read_text(encoding="utf-8", errors="replace")
            for pattern in FORBIDDEN:
                for match in re.finditer(pattern, text):
                    line = text[: match.start()].count("\n") + 1
                    rel = file.relative_to(REPO).as_posix()
                    if rel == "turing_models/io.py" and match.group(0) == "torch." + "load(":
                        continue
                    offenders.append(f"{rel}:{line}: {match.group(0)}")
    io_text = (REPO / "turing_models" / "io.py").read_text()
    assert io_text.count("torch." + "load(") == 1 and "weights_only=True" in io_text
    assert not offenders, "pickle loads outside turing_models.io.safe_torch_load:\n" + "\n".join(offenders)


def test_safe_torch_load_refuses_a_payload_in_one_line(tmp_path):
    from turing_models.io import safe_torch_load

    marker = tmp_path / "ran"
    plant(tmp_path / "w.bin", marker)
    with pytest.raises(UsageError) as err:
        safe_torch_load(tmp_path / "w.bin")
    assert "never unpickled" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def checkpoint(tokens, tmp_path_factory):
    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig

    out = tmp_path_factory.mktemp("payload-run")
    cfg = TrainerConfig(run_name="run", output_dir=str(out), max_steps=2, global_batch_size=4, micro_batch_size=2,
                        progress=False, tensorboard=False, save_every_steps=2, peak_flops=1e12)
    Trainer(tiny_model(), PackedDataset(tokens, "train", seq_len=16), config=cfg).fit()
    return out / "run" / "checkpoints" / "step-00000002"


def resume(tokens, run_root: Path, steps=3):
    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig

    cfg = TrainerConfig(run_name="run", output_dir=str(run_root), max_steps=steps, global_batch_size=4,
                        micro_batch_size=2, progress=False, tensorboard=False, peak_flops=1e12)
    trainer = Trainer(tiny_model(), PackedDataset(tokens, "train", seq_len=16), config=cfg)
    trainer.fit(resume="auto")
    return trainer


STEP_FILES = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_0.json",
              "rng_0.safetensors", "data_0.json", "trainer_state.json", "manifest.json"]


@pytest.mark.parametrize("name", STEP_FILES)
def test_resume_never_runs_a_payload(tokens, checkpoint, tmp_path, name):
    """The payload replaces a checkpoint file; the manifest is forged to match (except when the
    payload is the manifest). Resume refuses in one line, and nothing runs."""
    step = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, step)
    marker = tmp_path / "ran"
    plant(step / name, marker)
    if name != "manifest.json":
        write_manifest(step)
    if name == "manifest.json":  # no verified checkpoint is left: resume starts from scratch
        assert resume(tokens, tmp_path).step == 3
    else:
        with pytest.raises(UsageError) as err:
            resume(tokens, tmp_path)
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_resume_ignores_the_pickles_older_checkpoints_held(tokens, checkpoint, tmp_path):
    step = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, step)
    marker = tmp_path / "ran"
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "data_state_0.pt", "optimizer.bin",
                 "scheduler.bin", "pytorch_model.bin", "training_args.bin"):
        plant(step / name, marker)
    write_manifest(step)
    assert resume(tokens, tmp_path).step == 3
    assert not marker.exists()


# ---------------------------------------------------------------------------- consolidate / convert / from_pretrained

@pytest.fixture
def convert_main():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("recipe_convert_payload", REPO / "recipes" / "convert.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(argv, capsys):
        try:
            module.main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return run


def _config_folder(path: Path) -> Path:
    tiny_model().config.save_pretrained(path)
    return path


@pytest.mark.parametrize("layout", ["deepspeed-model", "deepspeed-optim", "deepspeed-legacy", "torch-bin",
                                   "dcp-metadata"])
def test_consolidate_never_runs_a_payload(tmp_path, convert_main, capsys, layout):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "ran"
    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    if layout.startswith("deepspeed"):
        tag = "pytorch_model" if layout == "deepspeed-legacy" else "global_step1"
        if layout != "deepspeed-legacy":
            (step / "latest").write_text(tag)
        good = {"buffer_names": [], "param_shapes": [{}], "shared_params": {}, "module": {}}
        if layout == "deepspeed-optim":
            (step / tag).mkdir()
            torch.save(good, step / tag / "mp_rank_00_model_states.pt")
            plant(step / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
        else:
            plant(step / tag / "mp_rank_00_model_states.pt", marker)
            plant(step / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    elif layout == "torch-bin":
        plant(step / "pytorch_model.bin", marker)
    else:
        plant(step / "pytorch_model_fsdp_0" / ".metadata", marker)
        plant(step / "pytorch_model_fsdp_0" / "__0_0.distcp", marker)
    code, err = convert_main(["consolidate", tmp_path / "run", tmp_path / "out", "--config",
                              _config_folder(tmp_path / "cfg")], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_from_pretrained_and_convert_never_run_a_payload(tmp_path, convert_main, capsys):
    from turing_models.nlg import TuringNLGForCausalLM

    marker = tmp_path / "ran"
    folder = _config_folder(tmp_path / "model")
    plant(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception):
        TuringNLGForCausalLM.from_pretrained(folder)
    assert not marker.exists()
    for argv in (["from-turing", folder, tmp_path / "hf"], ["to-turing", folder, tmp_path / "tm"]):
        code, _ = convert_main(argv, capsys)
        assert code != 0
        assert not marker.exists()
