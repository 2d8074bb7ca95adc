"""The wheel is a complete library: built from this tree, installed into a fresh environment outside
the checkout, it runs the named recipes, finds its engine configs and its bundled data from any folder.

The fresh environment gets the wheel only (``--no-deps``); its dependencies come from the test
environment's site-packages through a ``.pth`` line, so nothing is downloaded and the checkout is
not importable from it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["--model.overrides", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}",
         "--data.seq_len", "32", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
         "--train.max_steps", "2", "--train.warmup_steps", "1", "--train.log_every", "1",
         "--train.eval_steps", "2", "--train.progress", "false", "--train.tensorboard", "false"]


def _run(cmd, cwd, timeout=600, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, work folder)``: a fresh venv holding only the wheel built from this tree."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("turing_models", "turing_kernels", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", base / "dist", src],
         cwd=base)
    wheel = next((base / "dist").glob("turing_models-*.whl"))

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=base)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).strip()
    # the test environment's packages (torch, transformers, ...) under the wheel, not its editable checkout
    (Path(site) / "test_env_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"
    work.mkdir()
    return python, work, Path(site)


def test_the_wheel_holds_the_recipes_configs_and_data(installed):
    python, work, site = installed
    out = _run([python, "-c", (
        "import turing_models, turing_models.recipes.pretrain_nlg as r\n"
        "from turing_models.training.config import CONFIGS_DIR, distributed_config_path, resolve_recipe_path\n"
        "from turing_models.training.engine import DISTRIBUTED_DIR\n"
        "print(turing_models.__file__); print(r.__file__); print(CONFIGS_DIR); print(DISTRIBUTED_DIR)\n"
        "print(distributed_config_path('ds_zero3.json')); print(resolve_recipe_path('recipes/data/tinyshakespeare.txt'))"
    )], cwd=work)
    paths = [Path(line) for line in out.split()]
    assert all(str(p).startswith(str(site)) for p in paths), out  # nothing comes from the checkout
    assert paths[-1].is_file() and paths[-2].is_file()


def test_dry_run_of_a_named_recipe_from_any_folder(installed):
    python, work, _ = installed
    out = _run([python, "-m", "turing_models.recipes.pretrain_nlg", "--config", "tiny.yaml", "--dry-run"], cwd=work)
    assert "config OK: TuringNLG tiny" in out and "FLOPs per token" in out
    out = _run([python, "-m", "turing_models.recipes.pretrain_nlg", "--config", "17b.yaml", "--dry-run"], cwd=work)
    assert "config OK: TuringNLG 17b" in out and "engine zero3" in out


def test_two_step_pretraining_with_a_packaged_engine_config(installed):
    """``train.distributed zero2`` reads ds_zero2.json from the wheel; the corpus default is the
    bundled Shakespeare text. One process under torchrun, DeepSpeed's CPU accelerator."""
    pytest.importorskip("deepspeed")
    python, work, site = installed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run([python, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                "--master_port", port, "-m", "turing_models.recipes.pretrain_nlg", "--config", "tiny.yaml", *SMALL,
                "--train.distributed", "zero2", "--train.output_dir", work / "runs"], cwd=work, timeout=900)
    assert "validation loss" in out
    final = work / "runs" / "nlg-tiny" / "final"
    assert (final / "config.json").is_file() and any(final.glob("*.safetensors"))
    (tokens,) = list((work / "data_cache").iterdir())  # the bundled corpus, tokenized into ./data_cache
    out = _run([python, "-m", "turing_models.recipes.prepare_data", "info", tokens], cwd=work)
    assert "train: " in out and "tokens in" in out
