"""Corpus -> token shards: the on-disk format every pretraining recipe reads.

A prepared folder holds, per split (``train`` and ``val``)::

    <split>.bin   all tokens of the split, flat, uint16 (vocabulary <= 65536) or uint32
    <split>.idx   int64 document offsets: n_documents + 1 numbers, starting at 0; document i is
                  tokens[idx[i]:idx[i+1]] and ends with the EOS token
    tokenizer/    the tokenizer that produced the ids (save_pretrained folder)
    manifest.json format, dtype, counts per split, tokenizer hash, inputs with sizes + sha256,
                  settings, throughput; ``"complete": true`` once everything else is written

Both files are raw arrays (``np.memmap(path, dtype, mode="r")`` reads them). The whole folder is
written under a temporary name and renamed when complete, so a folder with a manifest is always
complete; re-running with the same inputs, tokenizer and settings reuses it.

The train/validation split is by document and deterministic: a document goes to ``val`` when a
keyed hash of its text falls below ``val_fraction``. It does not depend on the number of
processes or on the order of inputs, and exact duplicate documents always land in the same split.
A separate validation input (``val_inputs`` files, or ``val_dataset_split`` of the dataset)
replaces the hash split: then every document of the inputs is a train document and every
document of the validation input a validation one.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import UsageError
from ..io import atomic_directory, clean_stale_temps, sha256_file, sha256_json, write_json_atomic
from .sources import Source, dataset_source, iter_documents, resolve_inputs

logger = logging.getLogger("turing_models.data")

FORMAT_NAME = "turing-models token shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
INDEX_DTYPE = np.int64
_BATCH_CHARS = 1 << 18  # text per task sent to a worker
_BATCH_DOCS = 8192
_SMALL_INPUT_BYTES = 2 << 20  # below this, tokenize in-process: forking costs more than it saves
_ALL_VAL = 1 << 64  # the split threshold that sends every document to val (a validation input)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary of at most 65536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------
# Worker side: tokenizes a batch of documents (in a pool process, or in-process for num_proc=1)
# --------------------------------------------------------------------------------------------

_W: dict[str, Any] = {}


def _init_worker(tokenizer: Any, eos_id: int, dtype: str, val_threshold: int, seed: int) -> None:
    """Set up a tokenizing process. ``tokenizer`` is a ``tokenizers.Tokenizer``, its JSON
    serialization (spawned workers), or None in a forked worker, which inherits the parent's setup."""
    from tokenizers import Tokenizer

    if mp.parent_process() is not None:  # a pool worker: no Rust thread pool after fork
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if tokenizer is None:
        return
    if isinstance(tokenizer, str):
        tokenizer = Tokenizer.from_str(tokenizer)
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: never change the caller's
        tokenizer.no_truncation()
        tokenizer.no_padding()
    _W.update(tok=tokenizer, eos=eos_id, dtype=np.dtype(dtype), threshold=val_threshold,
              key=seed.to_bytes(8, "little", signed=True))


def _encode(docs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of ``docs`` (each followed by EOS) flat, their lengths, and which go to val."""
    encodings = _W["tok"].encode_batch_fast(docs, add_special_tokens=False)
    eos = _W["eos"]
    flat: list[int] = []
    lengths = np.empty(len(docs), dtype=np.int64)
    for i, enc in enumerate(encodings):
        ids = enc.ids
        flat.extend(ids)
        flat.append(eos)
        lengths[i] = len(ids) + 1
    threshold, key = _W["threshold"], _W["key"]
    if threshold >= _ALL_VAL:
        is_val = np.ones(len(docs), dtype=bool)
    elif threshold:
        is_val = np.fromiter(
            (int.from_bytes(hashlib.blake2b(d.encode("utf-8", "surrogatepass"), digest_size=8,
                                            key=key).digest(), "little") < threshold for d in docs),
            dtype=bool, count=len(docs))
    else:
        is_val = np.zeros(len(docs), dtype=bool)
    return np.array(flat, dtype=_W["dtype"]), lengths, is_val


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------


class _SplitWriter:
    def __init__(self, folder: Path, split: str, dtype: np.dtype):
        self.tokens = open(folder / f"{split}.bin", "wb")
        self.index = open(folder / f"{split}.idx", "wb")
        self.dtype = dtype
        self.num_tokens = 0
        self.num_documents = 0
        self.index.write(np.zeros(1, INDEX_DTYPE).tobytes())

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if not len(lengths):
            return
        self.tokens.write(tokens.tobytes())
        self.index.write((np.cumsum(lengths, dtype=INDEX_DTYPE) + self.num_tokens).tobytes())
        self.num_tokens += int(tokens.size)
        self.num_documents += int(lengths.size)

    def close(self) -> None:
        self.tokens.close()
        self.index.close()


def _batches(sources: Sequence[Source]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for src in sources:
        for doc in iter_documents(src):
            batch.append(doc)
            chars += len(doc)
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


@contextmanager
def _fork_env():
    """Keep the tokenizers library quiet and safe around fork.

    A forked child must not use the Rust thread pool the parent may have started; the workers turn
    it off themselves. Marking the setting as configured (its default, true) while the pool forks
    stops the library from printing its fork warning in every child; the parent is unchanged.
    """
    had = "TOKENIZERS_PARALLELISM" in os.environ
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        yield
    finally:
        if not had:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


def _run_pipeline(sources, backend, init_args, num_proc, writers, progress_bar, total_bytes) -> None:
    def consume(result) -> None:
        tokens, lengths, is_val = result
        if is_val.any():
            mask = np.repeat(is_val, lengths)
            writers["train"].write(tokens[~mask], lengths[~is_val])
            writers["val"].write(tokens[mask], lengths[is_val])
        else:
            writers["train"].write(tokens, lengths)
        progress_bar.update(int(tokens.size))
        if total_bytes:
            read = sum(s.bytes_read for s in sources)
            progress_bar.set_postfix_str(f"read {min(100.0, 100.0 * read / total_bytes):.0f}%", refresh=False)

    _init_worker(backend, *init_args[1:])  # in this process: used directly, or inherited by fork
    if num_proc <= 1:
        for batch in _batches(sources):
            consume(_encode(batch))
        return
    if "fork" in mp.get_all_start_methods():
        context, init_args = mp.get_context("fork"), (None, *init_args[1:])  # children inherit _W
    else:
        context = mp.get_context("spawn")
    with _fork_env():
        pool = context.Pool(num_proc, initializer=_init_worker, initargs=init_args)
    try:
        pending: deque = deque()
        for batch in _batches(sources):  # at most 2 tasks per worker in flight: bounded memory
            pending.append(pool.apply_async(_encode, (batch,)))
            while len(pending) > 2 * num_proc:
                consume(pending.popleft().get())
        while pending:
            consume(pending.popleft().get())
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder; :class:`UsageError` when it is missing or incomplete."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{str(path)!r} is a file, not a token folder; give the folder written by "
                         "`prepare_data.py tokenize` (its --output)")
    if not path.is_dir():
        raise UsageError(f"token folder {str(path)!r} does not exist; run `prepare_data.py tokenize` first")
    if not manifest_file.is_file():
        raise UsageError(
            f"{str(path)!r} is not a prepared token folder (no manifest.json); "
            "run `prepare_data.py tokenize --output` into it"
        )
    import json

    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError:
        raise UsageError(f"{manifest_file} is not valid JSON; re-run `prepare_data.py tokenize`") from None
    if manifest.get("format") != FORMAT_NAME or not manifest.get("complete"):
        raise UsageError(f"{str(path)!r} is not a complete token folder; re-run `prepare_data.py tokenize`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{str(path)!r} has token format version {manifest.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; re-run `prepare_data.py tokenize`"
        )
    return manifest


def _files_consistent(path: Path, manifest: dict[str, Any]) -> bool:
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split, info in manifest["splits"].items():
        tokens, index = path / f"{split}.bin", path / f"{split}.idx"
        if not tokens.is_file() or tokens.stat().st_size != info["tokens"] * itemsize:
            return False
        if not index.is_file() or index.stat().st_size != (info["documents"] + 1) * INDEX_DTYPE().itemsize:
            return False
    return True


def _inputs_unchanged(recorded: list[dict[str, Any]], sources: Sequence[Source]) -> bool:
    """Same inputs as recorded? Size + mtime match is trusted; otherwise compare sha256."""
    if len(recorded) != len(sources):
        return False
    for rec, src in zip(recorded, sources):
        if src.format == "dataset":
            if (rec.get("dataset"), rec.get("config"), rec.get("split")) != (
                src.path, src.dataset_config, src.dataset_split
            ):
                return False
            continue
        if rec.get("path") != src.path or rec.get("size") != src.size or rec.get("format") != src.format:
            return False
        if rec.get("mtime_ns") != src.mtime_ns and rec.get("sha256") != sha256_file(src.path):
            return False
    return True


def tokenize_corpus(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    tokenizer: Any = "gpt2-bpe",
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    streaming: bool = False,
    dataset_kwargs: dict[str, Any] | None = None,
    val_inputs: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    val_dataset_split: str | None = None,
    format: str = "auto",
    field: str = "text",
    text_split: str = "paragraph",
    val_fraction: float = 0.05,
    seed: int = 0,
    num_proc: int | None = None,
    seq_len: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike = "data_cache",
) -> Path:
    """Tokenize a corpus into a token folder (see the module docstring) and return its path.

    Args:
        inputs: text / JSONL / Parquet files, folders (recursive) and globs.
        output_dir: where to write; by default ``<cache_dir>/<name>-<tokenizer>-<hash>``, so the
            same call twice reuses the first result.
        tokenizer: a built-in name (``"gpt2-bpe"``), folder, Hub id or a loaded fast tokenizer.
        dataset, dataset_config, dataset_split, streaming, dataset_kwargs: read a ``datasets``
            name (Hub or local folder) too, with ``load_dataset(..., streaming=streaming)``.
        val_inputs, val_dataset_split: a separate validation input (files, folders and globs; or
            another split of ``dataset``). It replaces the hash split: ``val_fraction`` is not
            used, the inputs all go to ``train`` and these all go to ``val``.
        format: ``"auto"`` (by suffix), ``"text"``, ``"jsonl"`` or ``"parquet"``.
        field: the text field of JSONL / Parquet / dataset records.
        text_split: documents of text files: ``"paragraph"``, ``"line"`` or ``"file"``.
        val_fraction: expected fraction of documents in the validation split (by content hash).
        seed: key of the split hash.
        num_proc: tokenizer processes (default: the CPU count, at most 8; inputs under 2 MB are
            tokenized in-process).
        seq_len: when given, fail (and write nothing) if the train split holds less than one
            window of ``seq_len + 1`` tokens.
        overwrite: replace an existing output made from other inputs or settings.
        progress: show a progress bar (tokens, tokens/s) on stderr when it is a terminal.

    Re-running with the same inputs, tokenizer and settings returns the existing folder at once.
    Every bad input raises :class:`UsageError` with one line and leaves nothing on disk.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"seq_len must be positive, got {seq_len}")
    sources: list[Source] = []
    if inputs is not None and (not isinstance(inputs, (list, tuple)) or len(inputs)):
        sources += resolve_inputs(inputs, format=format, field=field, text_split=text_split)
    if dataset:
        sources.append(dataset_source(dataset, config=dataset_config, split=dataset_split, field=field,
                                      streaming=streaming, dataset_kwargs=dataset_kwargs))
    if not sources:
        raise UsageError("no inputs given; pass files, folders or globs, or a dataset name")
    val_sources: list[Source] = []
    if val_inputs is not None and (not isinstance(val_inputs, (list, tuple)) or len(val_inputs)):
        val_sources += resolve_inputs(val_inputs, format=format, field=field, text_split=text_split)
    if val_dataset_split:
        if not dataset:
            raise UsageError("val_dataset_split needs a dataset (--dataset NAME); for files use --val-input")
        val_sources.append(dataset_source(dataset, config=dataset_config, split=val_dataset_split, field=field,
                                          streaming=streaming, dataset_kwargs=dataset_kwargs))
    if val_sources:
        val_fraction = 0.0  # the validation input replaces the hash split

    from tqdm.auto import tqdm

    from .tokenizer import load_tokenizer, tokenizer_fingerprint

    tok = load_tokenizer(tokenizer)
    eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if eos_id is None:
        raise UsageError("the tokenizer has neither an eos_token nor a sep_token to put between documents; add one")
    vocab_size = max(len(tok), tok.backend_tokenizer.get_vocab_size(with_added_tokens=True))
    dtype = token_dtype(vocab_size)

    serialized = tok.backend_tokenizer.to_str()
    tok_hash = tokenizer_fingerprint(tok, serialized)
    settings = {"format": format, "field": field, "text_split": text_split,
                "val_fraction": val_fraction, "seed": seed, "eos_token_id": eos_id, "dtype": dtype.name}
    if val_sources:
        settings["val_inputs"] = len(val_sources)
    all_sources = sources + val_sources
    if output_dir is None:
        stem = Path(sources[0].path.rstrip("/")).name.split(".")[0] or "corpus"
        tok_name = Path(str(getattr(tok, "name_or_path", "") or "tokenizer").rstrip("/")).name or "tokenizer"
        where = sha256_json([settings, tok_hash, [(s.path, s.size, s.mtime_ns) for s in all_sources]])[:10]
        output_dir = Path(cache_dir) / f"{stem}-{tok_name}-{where}"
    output_dir = Path(output_dir)
    clean_stale_temps(output_dir.parent)  # what a killed run left behind (its process is gone)

    if output_dir.exists():
        try:
            old = read_manifest(output_dir)
        except UsageError:
            old = None
        # A dataset input counts as unchanged when its name, config and split are; files are
        # compared by size + mtime, then by sha256.
        if (old is not None and old.get("settings") == settings and old["tokenizer"]["sha256"] == tok_hash
                and _files_consistent(output_dir, old) and _inputs_unchanged(old["inputs"], all_sources)):
            logger.info("reusing %s (same inputs, tokenizer and settings)", output_dir)
            return output_dir
        if not overwrite:
            what = "token shards of other inputs or settings" if old is not None else "other files"
            raise UsageError(
                f"output folder {str(output_dir)!r} already holds {what}; pass --overwrite "
                "(overwrite=True) to replace it, or choose another output folder"
            )

    if num_proc is None:
        num_proc = min(8, os.cpu_count() or 1)
    total_bytes = sum(s.size for s in all_sources if s.format != "dataset")
    if total_bytes and total_bytes < _SMALL_INPUT_BYTES and dataset is None:
        num_proc = 1

    start = time.perf_counter()
    with atomic_directory(output_dir, overwrite=True) as tmp:
        writers = {split: _SplitWriter(tmp, split, dtype) for split in SPLITS}
        init_args = (serialized, eos_id, dtype.name,
                     int(val_fraction * (1 << 64)), seed)
        bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenizing -> {output_dir.name}",
                   disable=None if progress else True, dynamic_ncols=True)  # None: only on a terminal
        try:
            _run_pipeline(sources, tok.backend_tokenizer, init_args, num_proc, writers, bar, total_bytes)
            if val_sources:
                val_args = (*init_args[:3], _ALL_VAL, seed)
                _run_pipeline(val_sources, tok.backend_tokenizer, val_args, num_proc, writers, bar, total_bytes)
        finally:
            _W.clear()
            bar.close()
            for w in writers.values():
                w.close()
        elapsed = time.perf_counter() - start
        counts = {s: {"tokens": w.num_tokens, "documents": w.num_documents,
                      "file": f"{s}.bin", "index": f"{s}.idx"} for s, w in writers.items()}
        total_docs = sum(c["documents"] for c in counts.values())
        if total_docs == 0:
            raise UsageError("the inputs hold no documents (only empty or whitespace text); check the inputs")
        empty = [s.path for s in all_sources if s.documents == 0]
        if empty:
            raise UsageError(f"input {empty[0]!r} holds no text (only whitespace); remove it from the inputs")
        if counts["train"]["documents"] == 0:
            raise UsageError(
                f"the train split is empty: all {total_docs} document(s) went to the validation split "
                f"(val_fraction {val_fraction:g}); give more documents (for a text file, separate them by "
                "blank lines, or use --text-split line) or a smaller --val-fraction")
        if seq_len is not None and counts["train"]["tokens"] < seq_len + 1:
            raise UsageError(
                f"the corpus gives {counts['train']['tokens']} train tokens, fewer than one window of "
                f"seq_len + 1 = {seq_len + 1}; add data or use a smaller seq_len"
            )
        if val_fraction > 0 and counts["val"]["documents"] == 0:
            logger.warning("the validation split is empty (%d documents, val_fraction %g); "
                           "use a larger val_fraction for an evaluation set", total_docs, val_fraction)
        replaced = sum(s.replaced_chars for s in all_sources)
        if replaced:
            worst = max(all_sources, key=lambda s: s.replaced_chars)
            logger.warning(
                "replaced %d undecodable byte sequence(s) with U+FFFD in %d input(s) (most in %s: %d); "
                "the inputs are not valid UTF-8", replaced, sum(1 for s in all_sources if s.replaced_chars),
                worst.path, worst.replaced_chars)
        tok.save_pretrained(tmp / "tokenizer")
        total_tokens = sum(c["tokens"] for c in counts.values())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "complete": True,
            "key": sha256_json([settings, tok_hash, [s.identity() for s in all_sources]]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dtype": dtype.name,
            "index_dtype": np.dtype(INDEX_DTYPE).name,
            "tokenizer": {"name_or_path": str(getattr(tok, "name_or_path", "")), "sha256": tok_hash,
                          "vocab_size": vocab_size, "eos_token_id": eos_id, "folder": "tokenizer"},
            "settings": settings,
            "splits": counts,
            "replaced_chars": replaced,
            "inputs": [s.describe() for s in sources] + [{**s.describe(), "role": "validation"} for s in val_sources],
            "num_proc": num_proc,
            "elapsed_s": round(elapsed, 3),
            "tokens_per_s": round(total_tokens / max(elapsed, 1e-9), 1),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return output_dir


def load_split(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Memory-map one split: ``(tokens, doc_offsets, manifest)``."""
    path = Path(path)
    manifest = read_manifest(path)
    if split not in manifest["splits"]:
        raise UsageError(f"split {split!r} not in {str(path)!r}; choose one of {', '.join(manifest['splits'])}")
    if not _files_consistent(path, manifest):
        raise UsageError(f"the files in {str(path)!r} do not match its manifest (truncated?); re-run prepare_data.py tokenize")
    info = manifest["splits"][split]
    dtype = np.dtype(manifest["dtype"])
    tokens = np.memmap(path / info["file"], dtype=dtype, mode="r") if info["tokens"] else np.zeros(0, dtype)
    index = np.memmap(path / info["index"], dtype=INDEX_DTYPE, mode="r")
    return tokens, index, manifest


def documents_of(texts: Iterable[str], tokenizer: Any) -> list[list[int]]:
    """Reference tokenization of ``texts`` as the shards hold them (ids + EOS); for tests/tools."""
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    return [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids + [eos] for t in texts]


def write_token_folder(
    output_dir: str | os.PathLike,
    documents: dict[str, Iterable[Sequence[int] | np.ndarray]],
    *,
    vocab_size: int,
    eos_token_id: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write already tokenized documents (``{"train": [...], "val": [...]}``) as a token folder.

    For data tokenized elsewhere. Each document is written as given (append the EOS yourself);
    a missing split is written empty. The folder is written atomically like
    :func:`tokenize_corpus`'s, and its manifest records no tokenizer hash.
    """
    dtype = token_dtype(vocab_size)
    unknown = set(documents) - set(SPLITS)
    if unknown:
        raise UsageError(f"unknown split(s) {sorted(unknown)}; use {', '.join(SPLITS)}")
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        writers = {split: _SplitWriter(tmp, split, dtype) for split in SPLITS}
        try:
            for split, docs in documents.items():
                for doc in docs:
                    arr = np.asarray(doc, dtype=np.int64)
                    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                        raise UsageError(f"token ids must be in [0, {vocab_size}); got {arr.min()}..{arr.max()}")
                    writers[split].write(arr.astype(dtype), np.array([arr.size], dtype=np.int64))
        finally:
            for w in writers.values():
                w.close()
        counts = {s: {"tokens": w.num_tokens, "documents": w.num_documents,
                      "file": f"{s}.bin", "index": f"{s}.idx"} for s, w in writers.items()}
        write_json_atomic(tmp / "manifest.json", {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dtype": dtype.name, "index_dtype": np.dtype(INDEX_DTYPE).name,
            "tokenizer": {"name_or_path": None, "sha256": None, "vocab_size": vocab_size,
                          "eos_token_id": eos_token_id, "folder": None},
            "settings": {"pretokenized": True}, "splits": counts, "inputs": [],
        })
    return Path(output_dir)
