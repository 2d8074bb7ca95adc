"""The bottom floor: every file the project reads or writes goes through here.

* atomic files and folders: written under a temporary sibling name, fsynced, then renamed, so a
  reader never sees a half-written file and a crash leaves only a temporary name that the next
  start removes (:func:`clean_stale_temps`);
* manifests: sizes and sha256 of a folder's files, written last, so a folder is complete only if
  it verifies (:func:`write_manifest`, :func:`verify_manifest`);
* JSON and ``config.json`` readers that name the file in their error;
* safetensors headers and tensors, with damaged files reported in one line;
* :func:`safe_torch_load`, the project's only ``torch.load``: always ``weights_only=True``, so no
  file a user hands us is ever unpickled into code.

This module imports nothing else of the project but :mod:`turing_models.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from .errors import UsageError

PathLike = str | os.PathLike

MANIFEST_FILE = "manifest.json"

# ``.<name>.tmp-<pid>-<hex>``: every temporary name this module makes.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


class DiskFullError(OSError):
    """The disk (or a file-size limit) ran out while writing; nothing half-written was left."""


def _temp_sibling(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temp_name(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


def clean_stale_temps(folder: PathLike) -> list[Path]:
    """Remove temporary files and folders left in ``folder`` by processes that are gone.

    Matched by the naming pattern of :func:`atomic_directory` / :func:`atomic_file`; a temporary
    name whose process still runs (another writer) is left alone. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or _pid_alive(int(match.group("pid"))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def fsync_dir(path: PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


def remove_tree(path: PathLike) -> None:
    """Delete a folder by first renaming it to a temporary name (never leaves it half-deleted)."""
    path = Path(path)
    if not path.exists():
        return
    trash = _temp_sibling(path)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _reraise_disk_full(exc: OSError, target: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise DiskFullError(exc.errno, f"no space left while writing {target} ({os.strerror(exc.errno)}); "
                                       "free some space and run again (nothing was left half-written)") from None


@contextlib.contextmanager
def atomic_directory(target: PathLike, *, overwrite: bool = False, manifest: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``target`` when the block succeeds.

    On error (a full disk included) the temporary folder is removed and ``target`` is left as it
    was. With ``overwrite`` an existing ``target`` is replaced. With ``manifest`` a
    :data:`MANIFEST_FILE` of every file's size and sha256 is written last, before the rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent)
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists; remove it or choose another output folder")
    tmp = _temp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        _fsync_tree(tmp)
        if target.exists():
            remove_tree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            _reraise_disk_full(exc, target)
        raise


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            _reraise_disk_full(exc, path)
        raise


def write_json_atomic(path: PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=sort_keys)
        fh.write("\n")


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)


# ---------------------------------------------------------------------------- hashing + manifests

def sha256_file(path: PathLike, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _files_under(folder: Path) -> list[str]:
    names = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            if rel != MANIFEST_FILE:
                names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def write_manifest(folder: PathLike) -> dict:
    """Write ``folder/manifest.json``: every other file's size and sha256. Call it last."""
    folder = Path(folder)
    files = {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}
             for rel in _files_under(folder)}
    manifest = {"format": 1, "files": files}
    write_json_atomic(folder / MANIFEST_FILE, manifest, sort_keys=True)
    return manifest


def verify_manifest(folder: PathLike, *, check_hashes: bool = True) -> Optional[str]:
    """None when ``folder`` holds exactly the files its manifest lists, with their sizes and
    hashes; otherwise the reason it does not verify, as a short phrase."""
    folder = Path(folder)
    file = folder / MANIFEST_FILE
    if not file.is_file():
        return f"no {MANIFEST_FILE} (written last, so the folder was never completed)"
    try:
        files = json.loads(file.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {meta['size']}"
        if check_hashes and sha256_file(path) != meta["sha256"]:
            return f"{rel} does not match its sha256"
    return None


# ---------------------------------------------------------------------------- JSON and config.json

def read_json(path: PathLike, *, what: str = "file") -> Any:
    """Parse a JSON file; a missing or damaged file is a :class:`UsageError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} {path} is not valid JSON ({exc}); restore or re-create it") from None


def read_config(path: PathLike) -> dict:
    """A model folder's ``config.json`` (``path`` is the folder or the file) as a dict."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path} has no config.json; pass a save_pretrained model folder or a Hub id")
    data = read_json(file, what="model config")
    if not isinstance(data, dict):
        raise UsageError(f"model config {file} is not a JSON object; restore or re-create it")
    return data


# ---------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def safetensors_header(path: PathLike) -> dict[str, dict]:
    """The tensors of a ``.safetensors`` file (name -> {"dtype", "shape", "data_offsets"}),
    read from its header alone; a truncated or damaged file is a :class:`UsageError`."""
    path = Path(path)
    damaged = (f"{path} is damaged or truncated (not a complete safetensors file); "
               "download or export it again")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UsageError(damaged)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise UsageError(damaged)
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError):
        raise UsageError(damaged) from None
    if not isinstance(header, dict):
        raise UsageError(damaged)
    header.pop("__metadata__", None)
    end = 0
    for meta in header.values():
        try:
            start, stop = meta["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise UsageError(damaged) from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise UsageError(damaged)
    return header


def load_safetensors(path: PathLike, device: str = "cpu") -> dict:
    """All tensors of a ``.safetensors`` file, checked first by :func:`safetensors_header`."""
    from safetensors.torch import load_file

    safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # SafetensorError and friends: the file is bad, not the code
        raise UsageError(f"{path} could not be read as safetensors ({' '.join(str(exc).split())}); "
                         "download or export it again") from None


def save_safetensors(tensors: dict, path: PathLike, metadata: Optional[dict] = None) -> None:
    """Write tensors atomically (contiguous copies where needed)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            _reraise_disk_full(exc, path)
        raise


# ---------------------------------------------------------------------------- the one torch.load

def safe_torch_load(path: PathLike, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code.

    A file that holds anything else (a pickled object, a ``__reduce__`` payload) or is damaged
    is a :class:`UsageError` in one line, and nothing in it runs."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = " ".join(str(exc).split())[:160]
        raise UsageError(f"{path} holds Python objects, not plain tensors, and is never unpickled "
                         f"({first}); convert it to safetensors from a trusted environment") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is damaged or not a PyTorch weights file ({' '.join(str(exc).split())[:160]}); "
                         "restore it or use an earlier copy") from None
