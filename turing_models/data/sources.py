"""Corpus inputs: files, folders, globs and ``datasets`` names, read as a stream of documents.

A *document* is the unit that gets an EOS token after it and that the train/validation split
assigns as a whole:

- text files (``.txt``, ``.md``, ... and anything given explicitly): split by ``text_split``:
  ``"paragraph"`` (blank-line separated, the default), ``"line"`` or ``"file"``;
- JSONL (``.jsonl``, ``.json``, ``.ndjson``; one object per line): the string in ``field``;
- Parquet (``.parquet``): the string column ``field``;
- a ``datasets`` name or local dataset folder (``load_dataset``, optionally streaming): ``field``.

``.gz`` text and JSONL files are read transparently. Undecodable bytes are replaced by U+FFFD
and counted (the caller warns once with the total).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from ..errors import UsageError

TextSplit = Literal["paragraph", "line", "file"]
TEXT_SPLITS = ("paragraph", "line", "file")
FORMATS = ("auto", "text", "jsonl", "parquet")

_TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".raw", ".tokens"}
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_PARQUET_SUFFIXES = {".parquet"}
_BLOCK = 1 << 22  # bytes read per step from text files
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass
class Source:
    """One input (a file or a dataset) and what was learned while reading it."""

    path: str
    format: str  # text | jsonl | parquet | dataset
    field: str = "text"
    text_split: str = "paragraph"
    size: int = 0
    mtime_ns: int = 0
    dataset_config: str | None = None
    dataset_split: str = "train"
    streaming: bool = False
    dataset_kwargs: dict[str, Any] = dc_field(default_factory=dict)
    # filled while reading
    sha256: str | None = None
    documents: int = 0
    replaced_chars: int = 0
    bytes_read: int = 0
    fingerprint: str | None = None

    def describe(self) -> dict[str, Any]:
        """The manifest entry of this input."""
        if self.format == "dataset":
            return {
                "dataset": self.path, "config": self.dataset_config, "split": self.dataset_split,
                "streaming": self.streaming, "fingerprint": self.fingerprint,
                "documents": self.documents, "replaced_chars": self.replaced_chars,
            }
        return {
            "path": self.path, "format": self.format, "size": self.size, "mtime_ns": self.mtime_ns,
            "sha256": self.sha256, "documents": self.documents, "replaced_chars": self.replaced_chars,
        }

    def identity(self) -> dict[str, Any]:
        """What decides this input's content (for the cache key): content hash, not the path."""
        if self.format == "dataset":
            return {"dataset": self.path, "config": self.dataset_config, "split": self.dataset_split,
                    "kwargs": {k: str(v) for k, v in sorted(self.dataset_kwargs.items())}}
        return {"format": self.format, "size": self.size, "sha256": self.sha256}


def _format_of(path: str, explicit: bool) -> str | None:
    p = Path(path[:-3] if path.endswith(".gz") else path)
    suffix = p.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _TEXT_SUFFIXES or explicit:
        return "text"
    return None


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and _format_of(name, explicit=False):
                found.append(os.path.join(root, name))
    return found


def resolve_inputs(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    format: str = "auto",
    field: str = "text",
    text_split: str = "paragraph",
) -> list[Source]:
    """Expand files, folders (recursively, known suffixes only) and globs into sources.

    Raises :class:`UsageError` for a missing path, a glob or folder without usable files, an
    empty file, or an unknown format / text split.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if format not in FORMATS:
        raise UsageError(f"unknown input format {format!r}; choose one of {', '.join(FORMATS)}")
    if text_split not in TEXT_SPLITS:
        raise UsageError(f"unknown text split {text_split!r}; choose one of {', '.join(TEXT_SPLITS)}")
    if not inputs:
        raise UsageError("no inputs given; pass at least one file, folder or glob")
    paths: list[tuple[str, bool]] = []
    for item in inputs:
        spec = os.path.expanduser(os.fspath(item))
        if any(ch in spec for ch in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UsageError(f"input glob {spec!r} matched no files; check the pattern")
            for m in matches:
                paths += [(f, False) for f in _walk(m)] if os.path.isdir(m) else [(m, True)]
        elif os.path.isdir(spec):
            files = _walk(spec)
            if not files:
                raise UsageError(
                    f"input folder {spec!r} holds no .txt/.jsonl/.json/.parquet files (also .gz); "
                    "pass the files themselves"
                )
            paths += [(f, False) for f in files]
        elif os.path.isfile(spec):
            paths.append((spec, True))
        else:
            raise UsageError(f"input path {spec!r} does not exist; check the path")
    sources, seen = [], set()
    for path, explicit in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        fmt = format if format != "auto" else _format_of(path, explicit)
        if fmt is None:
            continue
        st = os.stat(path)
        if st.st_size == 0:
            raise UsageError(f"input file {path!r} is empty (0 bytes); remove it from the inputs")
        sources.append(Source(path=path, format=fmt, field=field, text_split=text_split,
                              size=st.st_size, mtime_ns=st.st_mtime_ns))
    return sources


def dataset_source(
    name: str,
    *,
    config: str | None = None,
    split: str = "train",
    field: str = "text",
    streaming: bool = False,
    dataset_kwargs: dict[str, Any] | None = None,
) -> Source:
    """A ``datasets.load_dataset`` input: a Hub name, or a local dataset folder / script."""
    return Source(path=name, format="dataset", field=field, dataset_config=config,
                  dataset_split=split, streaming=streaming, dataset_kwargs=dict(dataset_kwargs or {}))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _decode(raw: bytes, src: Source) -> str:
    """UTF-8 decode, replacing undecodable bytes with U+FFFD and counting the replacements."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        # Every U+FFFD in the text is a replacement, except those genuinely encoded in the input
        # (EF BF BD can only ever decode as U+FFFD, since EF is never a continuation byte).
        src.replaced_chars += text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
        return text


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _split_text(text: str, mode: str) -> list[str]:
    if mode == "paragraph":
        return _PARAGRAPH.split(text)
    return text.split("\n")


def _iter_text(src: Source) -> Iterator[str]:
    hasher = hashlib.sha256() if not src.path.endswith(".gz") else None
    carry_bytes, carry_text = b"", ""
    whole: list[str] = []
    with _open(src.path) as f:
        while True:
            block = f.read(_BLOCK)
            eof = not block
            if hasher is not None and block:
                hasher.update(block)
            src.bytes_read += len(block)
            data = carry_bytes + block
            # Cut after the last newline so that no UTF-8 sequence (and no CRLF) is split.
            cut = len(data) if eof else data.rfind(b"\n") + 1
            carry_bytes = data[cut:]
            text = _decode(data[:cut], src).replace("\r\n", "\n")
            if src.text_split == "file":
                whole.append(text)
            else:
                parts = _split_text(carry_text + text, src.text_split)
                carry_text = "" if eof else parts.pop()
                for doc in parts:
                    if doc.strip():
                        yield doc.rstrip("\n") if src.text_split == "paragraph" else doc
            if eof:
                break
    if src.text_split == "file":
        doc = "".join(whole)
        if doc.strip():
            yield doc
    src.sha256 = hasher.hexdigest() if hasher is not None else _sha256_file(src.path)


def _sha256_file(path: str) -> str:
    from ..io import sha256_file

    return sha256_file(path)


def _iter_jsonl(src: Source) -> Iterator[str]:
    hasher = hashlib.sha256() if not src.path.endswith(".gz") else None
    with _open(src.path) as f:
        for lineno, raw in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(raw)
            src.bytes_read += len(raw)
            line = _decode(raw, src).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"{src.path}:{lineno}: not valid JSON ({exc.msg}); the file must hold one JSON "
                    "object per line (JSON Lines): fix or remove that line"
                ) from None
            if not isinstance(record, dict) or src.field not in record:
                keys = ", ".join(list(record)[:8]) if isinstance(record, dict) else type(record).__name__
                raise UsageError(
                    f"{src.path}:{lineno}: no field {src.field!r} in this record (it has: {keys}); "
                    "pass the name of the text field (--field)"
                )
            value = record[src.field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise UsageError(
                    f"{src.path}:{lineno}: field {src.field!r} is a {type(value).__name__}, not text; "
                    "pass the name of a string field (--field)"
                )
            if value.strip():
                yield value
    src.sha256 = hasher.hexdigest() if hasher is not None else _sha256_file(src.path)


def _iter_parquet(src: Source) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{src.path}: not a readable Parquet file ({exc}); check the file") from None
    names = pf.schema_arrow.names
    if src.field not in names:
        raise UsageError(
            f"{src.path}: no column {src.field!r} (columns: {', '.join(names[:12])}); "
            "pass the name of the text column (--field)"
        )
    kind = pf.schema_arrow.field(src.field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UsageError(f"{src.path}: column {src.field!r} has type {kind}, not text; pass a string column")
    rows_total = max(pf.metadata.num_rows, 1)
    rows = 0
    for batch in pf.iter_batches(columns=[src.field], batch_size=4096):
        rows += batch.num_rows
        src.bytes_read = int(src.size * rows / rows_total)
        for value in batch.column(0).to_pylist():
            if value and value.strip():
                yield value
    src.sha256 = _sha256_file(src.path)


def _iter_dataset(src: Source) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(src.path, src.dataset_config, split=src.dataset_split,
                                   streaming=src.streaming, **src.dataset_kwargs)
    except Exception as exc:  # datasets raises many types (offline, not found, bad config)
        offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false", "False") or \
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (offline mode is on: download it first or pass a local folder)" if offline else ""
        raise UsageError(
            f"could not load dataset {src.path!r} (config {src.dataset_config!r}, split "
            f"{src.dataset_split!r}){hint}: {' '.join(str(exc).split())[:300]}"
        ) from None
    src.fingerprint = getattr(ds, "_fingerprint", None)
    columns = ds.column_names
    if columns is not None and src.field not in columns:
        raise UsageError(
            f"dataset {src.path!r} has no column {src.field!r} (columns: {', '.join(columns[:12])}); "
            "pass the name of the text column (--field)"
        )
    for batch in ds.iter(batch_size=1000):
        if src.field not in batch:
            raise UsageError(f"dataset {src.path!r} has no column {src.field!r}; pass --field")
        for value in batch[src.field]:
            if isinstance(value, str) and value.strip():
                src.bytes_read += len(value)
                yield value


def iter_documents(src: Source) -> Iterator[str]:
    """The non-empty documents of one source, in order."""
    reader = {"text": _iter_text, "jsonl": _iter_jsonl, "parquet": _iter_parquet,
              "dataset": _iter_dataset}[src.format]
    for doc in reader(src):
        src.documents += 1
        yield doc
