"""The bottom floor: every file the project reads or writes goes through here.

* atomic files and folders: written under a temporary sibling name, fsynced, then renamed, so a
  reader never sees a half-written file and a crash leaves only a temporary name that the next
  start removes (:func:`clean_stale_temps`);
* manifests: sizes and sha256 of a folder's files, written last, so a folder is complete only if
  it verifies (:func:`write_manifest`, :func:`verify_manifest`);
* JSON and ``config.json`` readers that name the file in their error;
* safetensors headers and tensors, with damaged files reported in one line;
* state trees (:func:`save_state` / :func:`load_state`): nested optimizer, scheduler, RNG and data
  states as JSON + safetensors, the pickle-free format of training checkpoints;
* :func:`safe_torch_load`, the project's only ``torch.load``: always ``weights_only=True``, so no
  file a user hands us is ever unpickled into code;
* :class:`DiskFullError`: a full disk (or file-size limit) while writing, raised after the
  temporary file or folder was removed; exit status 74 under ``cli_main``.

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
from typing import IO, Any, Iterator, Optional, Sequence

from .errors import RuntimeFault, UsageError

PathLike = str | os.PathLike

MANIFEST_FILE = "manifest.json"

# ``.<name>.tmp-<pid>-<hex>``: every temporary name this module makes.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


class DiskFullError(OSError, RuntimeFault):
    """The disk (or a file-size limit) ran out while writing; nothing half-written was left.
    Exit status 74 (``EX_IOERR``) under :func:`~turing_models.errors.cli_main`."""

    exit_status = 74

    def __str__(self) -> str:
        return str(self.strerror)

    @classmethod
    def writing(cls, what: str, code: int = errno.ENOSPC) -> "DiskFullError":
        return cls(code, f"no space left while writing {what} ({os.strerror(code)}); free some space and run "
                         "again (nothing was left half-written)")


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


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# how libraries that do their own I/O (safetensors' Rust writer) report the same errnos
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|"
                        rf"(?:os error|code:) ?(?:{'|'.join(str(e) for e in _FULL_ERRNOS)})")


def raise_if_disk_full(exc: BaseException, target: PathLike) -> None:
    """Raise :class:`DiskFullError` when ``exc`` says the disk or a file-size limit ran out."""
    if isinstance(exc, DiskFullError):
        return
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _FULL_ERRNOS:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not _FULL_TEXT.search(str(exc)):
            return
        code = errno.ENOSPC
    raise DiskFullError.writing(str(target), code) from None


@contextlib.contextmanager
def atomic_directory(target: PathLike, *, overwrite: bool = False, manifest: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``target`` when the block succeeds.

    On error (a full disk included) the temporary folder is removed and ``target`` is left as it
    was. With ``overwrite`` an existing ``target`` is replaced. With ``manifest`` a
    :data:`MANIFEST_FILE` of every file's size and sha256 is written last, before the rename.
    """
    tmp = make_temp_directory(target, overwrite=overwrite)
    try:
        yield tmp
        publish_directory(tmp, target, manifest=manifest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(exc, target)
        raise


def make_temp_directory(target: PathLike, *, overwrite: bool = False) -> Path:
    """The first half of :func:`atomic_directory`, for writers that span processes: clear stale
    temporary names beside ``target`` and create a fresh temporary sibling folder."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(target.parent)
        if target.exists() and not overwrite:
            raise UsageError(f"{target} already exists; remove it or choose another output folder")
        tmp = _temp_sibling(target)
        tmp.mkdir()
    except OSError as exc:
        raise_if_disk_full(exc, target)
        raise
    return tmp


def publish_directory(tmp: PathLike, target: PathLike, *, manifest: bool = False) -> None:
    """The second half of :func:`atomic_directory`: write the manifest (last), fsync, replace
    ``target`` by ``tmp``. On error the caller removes ``tmp``."""
    tmp, target = Path(tmp), Path(target)
    if manifest:
        write_manifest(tmp)
    _fsync_tree(tmp)
    if target.exists():
        remove_tree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    with _replacing(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _replacing(path: PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` on success, removed on error
    (a full disk becomes :class:`DiskFullError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise_if_disk_full(exc, path)
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


def numbered_dirs(folder: PathLike, prefix: str) -> list[Path]:
    """The ``<prefix><number>`` folders in ``folder`` (e.g. ``step-00000100``), lowest number first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_verified(folders: Sequence[Path], why=None) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """Walk back from the last of ``folders`` to the last that verifies (``why(folder)`` is None;
    default :func:`verify_manifest`). Returns it (or None) and the ``(folder, reason)`` pairs skipped."""
    why = why or verify_manifest
    skipped = []
    for path in reversed(list(folders)):
        reason = why(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


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

    seen: set = set()
    plain = {}
    for key, value in tensors.items():
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        ptr = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes()) if value.numel() else None
        if ptr is not None and (ptr in seen or not value.is_contiguous() or value.storage_offset()
                                or value.untyped_storage().nbytes() != value.numel() * value.element_size()):
            value = value.clone()  # tied or viewed tensors: safetensors stores each one on its own
        elif ptr is not None:
            seen.add(ptr)
        plain[key] = value
    with _replacing(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


# ---------------------------------------------------------------------------- the one torch.load

def safe_torch_load(path: PathLike, *, map_location: Any = "cpu", mmap: bool = False,
                    safe_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code.

    ``safe_globals``: extra classes the file may name (e.g. a library's enum or plain dataclass
    in its checkpoints), admitted through ``torch.serialization.safe_globals``; nothing else is.
    A file that holds anything else (a pickled object, a ``__reduce__`` payload) or is damaged
    is a :class:`UsageError` in one line, and nothing in it runs."""
    from pickle import UnpicklingError

    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except UnpicklingError as exc:
        first = " ".join(str(exc).split())[:160]
        raise UsageError(f"{path} holds Python objects, not plain tensors, and is never unpickled "
                         f"({first}); convert it to safetensors from a trusted environment") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is damaged or not a PyTorch weights file ({' '.join(str(exc).split())[:160]}); "
                         "restore it or use an earlier copy") from None


# ---------------------------------------------------------------------------- state trees

def split_tensors(obj: Any, prefix: str = "") -> tuple[Any, dict]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays) into a
    JSON-able skeleton and a flat ``{name: tensor}`` dict for safetensors. Tensors become
    ``{"__tensor__": name}``, tuples ``{"__tuple__": [...]}``, numpy arrays
    ``{"__ndarray__": [...], "dtype": ...}``; :func:`join_tensors` reverses it exactly."""
    import torch

    tensors: dict = {}

    def walk(value: Any, path: str) -> Any:
        if torch.is_tensor(value):
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, dict):
            if not all(isinstance(k, (str, int)) for k in value):
                raise TypeError(f"state key types {sorted({type(k).__name__ for k in value})} at {path or '/'}")
            items = {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return items
            return {"__dict__": [[k, v] for k, v in items.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if type(value).__module__ == "numpy":
            import numpy as np

            if isinstance(value, np.ndarray):
                return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
            return value.item()
        raise TypeError(f"cannot store a {type(value).__name__} at {path or '/'} without pickle")

    return walk(obj, prefix), tensors


def join_tensors(skeleton: Any, tensors: dict) -> Any:
    """The inverse of :func:`split_tensors`."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if "__tensor__" in value:
                return tensors[value["__tensor__"]]
            if "__dict__" in value:
                return {k: walk(v) for k, v in value["__dict__"]}
            if "__tuple__" in value:
                return tuple(walk(v) for v in value["__tuple__"])
            if "__ndarray__" in value:
                import numpy as np

                return np.asarray(value["__ndarray__"], dtype=value["dtype"])
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(skeleton)


def save_state(folder: PathLike, name: str, state: Any) -> None:
    """Write a nested state as ``name.json`` (+ ``name.safetensors`` for its tensors): the
    project's replacement for pickling optimizer, scheduler, RNG and data states."""
    folder = Path(folder)
    skeleton, tensors = split_tensors(state)
    if tensors:
        save_safetensors(tensors, folder / f"{name}.safetensors")
    write_json_atomic(folder / f"{name}.json", {"format": 1, "state": skeleton})


def load_state(folder: PathLike, name: str) -> Any:
    """Read what :func:`save_state` wrote; damaged files are a :class:`UsageError`."""
    folder = Path(folder)
    data = read_json(folder / f"{name}.json", what="state file")
    if not isinstance(data, dict) or "state" not in data:
        raise UsageError(f"state file {folder / f'{name}.json'} is damaged; resume from an earlier checkpoint")
    file = folder / f"{name}.safetensors"
    tensors = load_safetensors(file) if file.is_file() else {}
    try:
        return join_tensors(data["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"state file {folder / f'{name}.json'} does not match its tensors ({exc}); "
                         "resume from an earlier checkpoint") from None
