"""Runtime faults end a run the documented way, and a killed run resumes bit-identically.

Every case runs ``run_tiny.py`` (a recipe-shaped tiny pretraining run) in its own process:

* SIGTERM: a checkpoint, one ``stopped:`` line, exit status 143; ``--resume auto`` finishes the run;
* a full disk (a file-size limit through ``RLIMIT_FSIZE``): one ``error:`` line, exit status 74,
  nothing half-written;
* ``kill -9`` at several moments, including inside a checkpoint write and during the final export:
  the next ``--resume auto`` takes the newest checkpoint that verifies, the losses are bit-identical
  to an uninterrupted run, the final export verifies, and no temporary file or folder is left.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from turing_models.io import verify_manifest

from reliability_helpers import error_lines, leftovers, run_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
    code, _, err, losses = run_tiny(tokens, tmp_path_factory.mktemp("reference"), "--steps", 6)
    assert code == 0, err
    return losses


def test_sigterm_checkpoints_and_exits_143(tokens, reference, tmp_path):
    code, _, err, _ = run_tiny(tokens, tmp_path, "--steps", 6, "--sigterm-after-step", 3)
    assert code == 143 == 128 + signal.SIGTERM
    assert error_lines(err)[-1] == ("stopped: SIGTERM stopped training at step 3: checkpoint saved; "
                                    "rerun with --resume auto to continue")
    step3 = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert verify_manifest(step3) is None and not (tmp_path / "run" / "final").exists()
    code, _, err, losses = run_tiny(tokens, tmp_path, "--steps", 6, "--resume", "auto")
    assert code == 0, err
    assert losses == reference


def test_full_disk_is_one_line_exit_74_and_leaves_nothing_half_written(tokens, tmp_path):
    code, out, err, _ = run_tiny(tokens, tmp_path, "--steps", 6, "--fsize-limit", 120_000)
    lines = error_lines(err)
    assert code == 74, err
    assert lines[-1].startswith("error: no space left while writing checkpoint ") and "free some space" in lines[-1]
    assert "Traceback" not in err
    run_dir = tmp_path / "run"
    assert not leftovers(run_dir)
    for step in (run_dir / "checkpoints").glob("step-*"):
        assert verify_manifest(step) is None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # no half line


def test_kill_9_at_several_moments_then_resume_is_bit_identical_and_clean(tokens, reference, tmp_path):
    """One run killed four times (6 steps, a checkpoint every 2): between steps; while writing
    checkpoint 4 (after its model file); with checkpoint 4 complete but not yet renamed; and during
    the final export (weights written, not renamed). Each restart is ``--resume auto``."""
    run_dir = tmp_path / "run"
    for point in ("step-3", "ckpt-4-optimizer", "ckpt-4-publish", "final-weights"):
        args = ["--steps", 6, "--kill-at", point] + (["--resume", "auto"] if point != "step-3" else [])
        code, _, err, _ = run_tiny(tokens, tmp_path, *args)
        assert code == -signal.SIGKILL, (point, err[-2000:])
        if point != "step-3":
            assert leftovers(run_dir), point  # the kill did interrupt a write
        for step in (run_dir / "checkpoints").glob("step-*"):
            assert verify_manifest(step) is None, point
    code, _, err, losses = run_tiny(tokens, tmp_path, "--steps", 6, "--resume", "auto")
    assert code == 0, err
    assert losses == reference
    assert verify_manifest(run_dir / "final") is None
    assert not leftovers(run_dir)
