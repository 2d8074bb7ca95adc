"""turing_models.io: atomic files and folders, manifests, stale temporaries, safetensors checks,
state trees (the pickle-free format of checkpoints), the one safe torch.load, full disks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from turing_models import io
from turing_models.errors import UsageError


def test_atomic_directory_publishes_with_a_manifest_or_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with io.atomic_directory(target, manifest=True) as tmp:
        assert tmp.name.startswith(".out.tmp-") and io.is_temp_name(tmp.name)
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"bb")
    assert io.verify_manifest(target) is None
    with pytest.raises(RuntimeError):
        with io.atomic_directory(target, overwrite=True) as tmp:
            (tmp / "c.txt").write_text("c")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # old folder kept, temp removed
    (target / "sub" / "b.bin").write_bytes(b"b")
    assert io.verify_manifest(target) == "sub/b.bin has 1 bytes, the manifest says 2"
    (target / "sub" / "b.bin").write_bytes(b"xx")
    assert io.verify_manifest(target) == "sub/b.bin does not match its sha256"
    (target / "a.txt").unlink()
    assert io.verify_manifest(target) == "a.txt is missing"


def test_clean_stale_temps_matches_the_pattern_not_the_pid(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".x.tmp-{proc.pid}-0123abcd"
    dead.mkdir()
    dead_file = tmp_path / f".y.json.tmp-{proc.pid}-89abcdef"
    dead_file.write_text("{")
    live = tmp_path / f".z.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    other = tmp_path / ".hidden"
    other.mkdir()
    assert sorted(p.name for p in io.clean_stale_temps(tmp_path)) == sorted([dead.name, dead_file.name])
    assert live.exists() and other.exists()


def test_safetensors_header_and_load_refuse_damaged_files(tmp_path):
    file = tmp_path / "w.safetensors"
    a = torch.arange(6.0)
    io.save_safetensors({"a": a, "tied": a, "view": a[2:4]}, file)  # shared storages are stored apart
    assert set(io.safetensors_header(file)) == {"a", "tied", "view"}
    assert torch.equal(io.load_safetensors(file)["view"], torch.tensor([2.0, 3.0]))
    data = file.read_bytes()
    for cut in (4, 20, len(data) - 3):
        file.write_bytes(data[:cut])
        with pytest.raises(UsageError, match="damaged or truncated"):
            io.load_safetensors(file)


def test_state_trees_round_trip_exactly(tmp_path):
    import random

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "groups": [{"betas": (0.9, 0.95), "params": [0, 1], "lr": 1e-3}],
             "by_id": {0: {"step": torch.tensor(3.0)}},
             "none": None, "flag": True, "__odd": "x"}
    io.save_state(tmp_path, "s", state)
    back = io.load_state(tmp_path, "s")
    assert back["python"] == state["python"]
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(back["numpy"], state["numpy"]))
    assert torch.equal(back["torch"], state["torch"]) and back["torch"].dtype == torch.uint8
    assert back["groups"][0]["betas"] == (0.9, 0.95) and back["by_id"][0]["step"].item() == 3.0
    assert back["none"] is None and back["flag"] is True and back["__odd"] == "x"
    with pytest.raises(TypeError, match="without pickle"):
        io.save_state(tmp_path, "bad", {"x": object()})


def test_safe_torch_load_takes_only_the_named_safe_globals(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.bin")
    assert torch.equal(io.safe_torch_load(tmp_path / "plain.bin")["w"], torch.ones(2))
    torch.save({"when": _Point(1, 2)}, tmp_path / "obj.bin")
    with pytest.raises(UsageError, match="never unpickled"):
        io.safe_torch_load(tmp_path / "obj.bin")
    assert io.safe_torch_load(tmp_path / "obj.bin", safe_globals=[_Point])["when"] == _Point(1, 2)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "plain.bin").read_bytes()[:50])
    with pytest.raises(UsageError, match="damaged"):
        io.safe_torch_load(tmp_path / "cut.bin")
    with pytest.raises(UsageError, match="does not exist"):
        io.safe_torch_load(tmp_path / "nowhere.bin")


class _Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, _Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.slow
def test_a_full_disk_is_a_disk_full_error_and_leaves_nothing(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) in a child process stands in for a full disk."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from turing_models import io
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        out = {str(tmp_path)!r}

        def folder():
            with io.atomic_directory(out + "/folder", manifest=True) as tmp:
                (tmp / "big.bin").write_bytes(bytes(100_000))

        for write in (lambda: io.save_safetensors({{"w": torch.zeros(100_000)}}, out + "/w.safetensors"),
                      lambda: io.write_json_atomic(out + "/big.json", list(range(100_000))), folder):
            try:
                write()
                print("written")
            except io.DiskFullError as exc:
                print(exc.exit_status, exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for line, name in zip(lines, ("w.safetensors", "big.json", "folder")):
        assert line.startswith(f"74 no space left while writing {tmp_path / name} ") and "half-written" in line
    assert list(tmp_path.iterdir()) == []
