#!/usr/bin/env python
"""Prepare pretraining data: train a tokenizer, tokenize a corpus into token shards, inspect them.

    # tokenize the bundled corpus with the built-in GPT-2 BPE (train/val split by paragraph)
    python recipes/prepare_data.py tokenize --input recipes/data/tinyshakespeare.txt \\
        --tokenizer gpt2-bpe --output data_cache/shakespeare-gpt2

    # a separate validation input instead of the hash split (files, or another dataset split)
    python recipes/prepare_data.py tokenize --input train.txt --val-input valid.txt --output data_cache/mine

    # JSONL / Parquet / folders / globs: --field names the text field
    python recipes/prepare_data.py tokenize --input 'corpus/**/*.jsonl.gz' --field text --output data_cache/web

    # a datasets name (Hub or local folder), streamed, with its own validation split
    python recipes/prepare_data.py tokenize --dataset wikitext --dataset-config wikitext-103-raw-v1 \\
        --val-dataset-split validation --streaming --output data_cache/wikitext

    # train a tokenizer: byte-level BPE, SentencePiece unigram or WordPiece
    python recipes/prepare_data.py tokenizer --input recipes/data/tinyshakespeare.txt \\
        --kind unigram --vocab-size 8000 --output checkpoints/tokenizers/shakespeare-unigram

    # what is in a token folder
    python recipes/prepare_data.py info data_cache/shakespeare-gpt2

Every option also takes underscores (``--val_fraction``) and can come from a YAML file
(``tokenize --config data.yaml``). Bad input ends with one line ``error: ...`` and exit status 2;
nothing half-written is left.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from dataclasses import field as option  # 'field' is also a setting's name here
from pathlib import Path
from typing import Literal, Optional

from turing_models.errors import UsageError, cli_main
from turing_models.training.config import alias, parse_command, positional

Format = Literal["auto", "text", "jsonl", "parquet"]
TextSplit = Literal["paragraph", "line", "file"]


@dataclass
class Tokenize:
    """Corpus -> token shards (uint16/uint32 memmap + document index)."""

    input: list[str] = option(default_factory=list, metadata=alias("-i"))
    """Text / JSONL / Parquet files (.gz allowed), folders (recursive) or globs."""
    val_input: list[str] = option(default_factory=list)
    """A separate validation input (files, folders, globs); replaces the hash split."""
    dataset: Optional[str] = None
    """A datasets name (Hub id or local folder) to read instead of / besides --input."""
    dataset_config: Optional[str] = None
    """The dataset's configuration name."""
    dataset_split: str = "train"
    """The dataset split to read."""
    val_dataset_split: Optional[str] = None
    """A split of --dataset to use for validation (e.g. validation); replaces the hash split."""
    streaming: bool = False
    """Stream the dataset instead of downloading it first."""
    format: Format = "auto"
    """Input format (auto: by file suffix; other suffixes read as text)."""
    field: str = "text"
    """Text field of JSONL / Parquet / dataset records."""
    text_split: TextSplit = "paragraph"
    """What one document is in a text file (paragraph: blank-line separated)."""
    tokenizer: str = "gpt2-bpe"
    """Built-in name, folder or Hub id."""
    output: Optional[str] = option(default=None, metadata=alias("-o"))
    """Output folder (default: data_cache/<name>-<tokenizer>-<hash>)."""
    val_fraction: float = 0.05
    """Fraction of documents in the validation split (by content hash)."""
    seed: int = 0
    """Key of the split hash."""
    num_proc: Optional[int] = None
    """Tokenizer processes (default: CPU count, max 8)."""
    seq_len: Optional[int] = None
    """Fail unless the train split holds at least one window of seq_len + 1 tokens."""
    overwrite: bool = False
    """Replace an output made from other inputs."""
    no_progress: bool = False
    """No progress bar."""


@dataclass
class TrainTokenizer:
    """Train a tokenizer, saved as a transformers fast tokenizer folder."""

    input: list[str] = option(default_factory=list, metadata=alias("-i"))
    """Text / JSONL / Parquet files (.gz allowed), folders (recursive) or globs."""
    output: str = option(default="", metadata=alias("-o"))
    """Output folder."""
    kind: Literal["bpe", "unigram", "sentencepiece", "wordpiece"] = "bpe"
    """Byte-level BPE (GPT-2), unigram (tokenizers) or sentencepiece (the sentencepiece library),
    both with ▁ words, or WordPiece (BERT)."""
    vocab_size: int = 32000
    min_frequency: int = 2
    """Minimum pair frequency (BPE/WordPiece)."""
    lowercase: Optional[bool] = None
    """Lowercase the text (default: on for wordpiece, off otherwise)."""
    model_max_length: int = 1024
    """model_max_length saved with it."""
    format: Format = "auto"
    field: str = "text"
    text_split: TextSplit = "paragraph"
    overwrite: bool = False
    """Replace an existing output folder."""


@dataclass
class Info:
    """Print the manifest summary of a token folder."""

    path: str = option(default="", metadata=positional("a folder written by `tokenize`"))
    json: bool = False
    """Print the whole manifest as JSON."""


def tokenize(args: Tokenize) -> Path:
    from turing_models.data import tokenize_corpus

    if not args.input and not args.dataset:
        raise UsageError("nothing to tokenize; pass --input FILES... or --dataset NAME")
    out = tokenize_corpus(
        args.input or None, args.output, tokenizer=args.tokenizer, dataset=args.dataset,
        dataset_config=args.dataset_config, dataset_split=args.dataset_split, streaming=args.streaming,
        val_inputs=args.val_input or None, val_dataset_split=args.val_dataset_split,
        format=args.format, field=args.field, text_split=args.text_split, val_fraction=args.val_fraction,
        seed=args.seed, num_proc=args.num_proc, seq_len=args.seq_len, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_summary(out)
    return out


def train(args: TrainTokenizer) -> Path:
    from turing_models.data.sources import iter_documents, resolve_inputs
    from turing_models.data.tokenizer import train_tokenizer

    if not args.input or not args.output:
        raise UsageError("tokenizer needs --input FILES... and --output FOLDER")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise UsageError(f"output folder {str(out)!r} already exists; pass --overwrite or choose another")
    sources = resolve_inputs(args.input, format=args.format, field=args.field, text_split=args.text_split)
    texts = (doc for src in sources for doc in iter_documents(src))
    tok = train_tokenizer(texts, kind=args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase, model_max_length=args.model_max_length, output_dir=out)
    replaced = sum(s.replaced_chars for s in sources)
    if replaced:
        logging.getLogger("turing_models.data").warning(
            "replaced %d undecodable byte sequence(s) with U+FFFD while reading the inputs", replaced)
    docs = sum(s.documents for s in sources)
    print(f"trained a {args.kind} tokenizer with {len(tok)} tokens on {docs} documents -> {out}")
    return out


def _print_summary(path: str | Path) -> None:
    from turing_models.data import read_manifest

    m = read_manifest(path)
    splits = ", ".join(f"{name}: {s['tokens']:,} tokens in {s['documents']:,} documents"
                       for name, s in m["splits"].items())
    print(f"{path}: {splits}; {m['dtype']}, vocabulary {m['tokenizer']['vocab_size']:,}, "
          f"{m['tokens_per_s']:,.0f} tokens/s when written")


def info(args: Info) -> None:
    from turing_models.data import read_manifest

    if args.json:
        print(json.dumps(read_manifest(args.path), indent=2))
    else:
        _print_summary(args.path)


COMMANDS = {"tokenize": (Tokenize, tokenize), "tokenizer": (TrainTokenizer, train), "info": (Info, info)}


@cli_main
def main(argv: Optional[list[str]] = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("turing_models").setLevel(logging.INFO)
    name, args = parse_command({k: cls for k, (cls, _) in COMMANDS.items()}, argv, prog="prepare_data.py",
                               description=__doc__)
    COMMANDS[name][1](args)


if __name__ == "__main__":
    main()
