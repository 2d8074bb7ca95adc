"""Token folders, torchrun launches and recipe loading for the trainer tests; the tiny models are
tests/factories.py's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, also for torchrun workers
from factories import TRAINER_VOCAB as VOCAB  # noqa: E402
from factories import trainer_nlg_config as tiny_config  # noqa: E402,F401
from factories import trainer_nlg_model as tiny_model  # noqa: E402,F401

SEQ = 16


def token_folder(path: Path, n_train_docs: int = 40, n_val_docs: int = 6, seed: int = 0) -> Path:
    """A token folder of random 'documents' with a learnable pattern (each doc counts up mod VOCAB)."""
    from turing_models.data import write_token_folder

    rng = np.random.default_rng(seed)

    def doc():
        start, length = int(rng.integers(1, VOCAB)), int(rng.integers(20, 60))
        return [(start + i) % (VOCAB - 1) + 1 for i in range(length)] + [0]

    docs = {"train": [doc() for _ in range(n_train_docs)], "val": [doc() for _ in range(n_val_docs)]}
    return write_token_folder(path, docs, vocab_size=VOCAB, eos_token_id=0)


TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    """The environment for a launched worker: one thread, no inherited rendezvous variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun_cmd(nproc: int) -> list[str]:
    """``torchrun`` for ``nproc`` processes on this host, on a free port."""
    return [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port())]


def run_worker(cmd: list[str], out: Path, timeout: int = 600, check: bool = True):
    """Run a worker command; with ``check``, assert it succeeded and return its ``result.json``."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch_env())
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((Path(out) / "result.json").read_text())


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes are scripts, not a package)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
