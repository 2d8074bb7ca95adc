"""Helpers of the reliability tests: a tiny run in a subprocess, what a user sees, leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNNER = HERE / "run_tiny.py"


def run_tiny(data, out, *args, timeout=300):
    """Run ``run_tiny.py`` in a fresh process; returns (exit status, stdout, stderr, losses or None)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(RUNNER), "--data", str(data), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    losses = None
    for line in proc.stdout.splitlines():
        if line.startswith("{\"losses\""):
            losses = json.loads(line)["losses"]
    return proc.returncode, proc.stdout, proc.stderr, losses


def error_lines(stderr: str) -> list[str]:
    """The lines a user sees, without library warnings and progress bars."""
    return [line for line in stderr.splitlines()
            if line.strip() and "warn" not in line.lower() and "Writing model shards" not in line]


def leftovers(root: Path) -> list[Path]:
    """Temporary names anywhere under ``root`` (io's ``.<name>.tmp-*`` and the older ``.tmp-*``)."""
    return [p for p in Path(root).rglob(".*") if ".tmp-" in p.name or p.name.startswith(".tmp")]
