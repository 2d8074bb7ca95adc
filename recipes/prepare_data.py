#!/usr/bin/env python
"""Prepare pretraining data: train a tokenizer, tokenize a corpus into token shards, inspect them.

    # tokenize the bundled corpus with the built-in GPT-2 BPE (train/val split by paragraph)
    python recipes/prepare_data.py tokenize --input recipes/data/tinyshakespeare.txt \\
        --tokenizer gpt2-bpe --output data_cache/shakespeare-gpt2

    # JSONL / Parquet / folders / globs: --field names the text field
    python recipes/prepare_data.py tokenize --input 'corpus/**/*.jsonl.gz' --field text --output data_cache/web

    # a datasets name (Hub or local folder), streamed
    python recipes/prepare_data.py tokenize --dataset wikitext --dataset-config wikitext-103-raw-v1 \\
        --streaming --output data_cache/wikitext

    # train a tokenizer: byte-level BPE, SentencePiece unigram or WordPiece
    python recipes/prepare_data.py tokenizer --input recipes/data/tinyshakespeare.txt \\
        --kind unigram --vocab-size 8000 --output checkpoints/tokenizers/shakespeare-unigram

    # what is in a token folder
    python recipes/prepare_data.py info data_cache/shakespeare-gpt2

Bad input ends with one line ``error: ...`` and exit status 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from turing_models.errors import UsageError, cli_main  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_inputs(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--input", "-i", nargs="+", default=[], required=required,
                       help="text / JSONL / Parquet files (.gz allowed), folders (recursive) or globs")
        p.add_argument("--format", default="auto", choices=["auto", "text", "jsonl", "parquet"],
                       help="input format (default: by file suffix; other suffixes read as text)")
        p.add_argument("--field", default="text", help="text field of JSONL / Parquet / dataset records")
        p.add_argument("--text-split", default="paragraph", choices=["paragraph", "line", "file"],
                       help="what one document is in a text file (default: blank-line separated paragraph)")

    tk = sub.add_parser("tokenize", help="corpus -> token shards (uint16/uint32 memmap + document index)")
    add_inputs(tk, required=False)
    tk.add_argument("--dataset", help="a datasets name (Hub id or local folder) to read instead of / besides --input")
    tk.add_argument("--dataset-config", help="the dataset's configuration name")
    tk.add_argument("--dataset-split", default="train", help="the dataset split to read (default: train)")
    tk.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it first")
    tk.add_argument("--tokenizer", default="gpt2-bpe", help="built-in name, folder or Hub id (default: gpt2-bpe)")
    tk.add_argument("--output", "-o", help="output folder (default: data_cache/<name>-<tokenizer>-<hash>)")
    tk.add_argument("--val-fraction", type=float, default=0.05,
                    help="fraction of documents in the validation split (default: 0.05)")
    tk.add_argument("--seed", type=int, default=0, help="key of the split hash (default: 0)")
    tk.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: CPU count, max 8)")
    tk.add_argument("--seq-len", type=int, default=None,
                    help="fail unless the train split holds at least one window of seq_len + 1 tokens")
    tk.add_argument("--overwrite", action="store_true", help="replace an output made from other inputs")
    tk.add_argument("--no-progress", action="store_true", help="no progress bar")

    tr = sub.add_parser("tokenizer", help="train a tokenizer, saved as a transformers fast tokenizer folder")
    add_inputs(tr, required=True)
    tr.add_argument("--kind", default="bpe", choices=["bpe", "unigram", "sentencepiece", "wordpiece"],
                    help="byte-level BPE (GPT-2), unigram (tokenizers) or sentencepiece (the sentencepiece library), both with ▁ words, or WordPiece (BERT)")
    tr.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size (default: 32000)")
    tr.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency (BPE/WordPiece)")
    tr.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                    help="lowercase the text (default: on for wordpiece, off otherwise)")
    tr.add_argument("--model-max-length", type=int, default=1024, help="model_max_length saved with it")
    tr.add_argument("--output", "-o", required=True, help="output folder")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    info = sub.add_parser("info", help="print the manifest summary of a token folder")
    info.add_argument("path", help="a folder written by `tokenize`")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    return parser


def _tokenize(args: argparse.Namespace) -> None:
    from turing_models.data import tokenize_corpus

    if not args.input and not args.dataset:
        raise UsageError("nothing to tokenize; pass --input FILES... or --dataset NAME")
    out = tokenize_corpus(
        args.input or None, args.output, tokenizer=args.tokenizer, dataset=args.dataset,
        dataset_config=args.dataset_config, dataset_split=args.dataset_split, streaming=args.streaming,
        format=args.format, field=args.field, text_split=args.text_split, val_fraction=args.val_fraction,
        seed=args.seed, num_proc=args.num_proc, seq_len=args.seq_len, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_summary(out)


def _train(args: argparse.Namespace) -> None:
    from turing_models.data.sources import iter_documents, resolve_inputs
    from turing_models.data.tokenizer import train_tokenizer

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


def _print_summary(path: str | Path) -> None:
    from turing_models.data import read_manifest

    m = read_manifest(path)
    splits = ", ".join(f"{name}: {s['tokens']:,} tokens in {s['documents']:,} documents"
                       for name, s in m["splits"].items())
    print(f"{path}: {splits}; {m['dtype']}, vocabulary {m['tokenizer']['vocab_size']:,}, "
          f"{m['tokens_per_s']:,.0f} tokens/s when written")


def _info(args: argparse.Namespace) -> None:
    from turing_models.data import read_manifest

    if args.json:
        print(json.dumps(read_manifest(args.path), indent=2))
    else:
        _print_summary(args.path)


@cli_main
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("turing_models").setLevel(logging.INFO)
    args = _parser().parse_args(argv)
    {"tokenize": _tokenize, "tokenizer": _train, "info": _info}[args.command](args)


if __name__ == "__main__":
    main()
