#!/usr/bin/env python
"""Data pipeline throughput: our full corpus -> shards path against the raw tokenizer.

Both sides see the same text: the bundled Shakespeare corpus repeated to ``--mb`` megabytes,
split into the same paragraphs.

- ours: ``tokenize_corpus`` end to end (read + hash the file, split documents, tokenize in
  ``--num-proc`` processes, split train/val, write both memmaps + index, save the tokenizer and
  the manifest);
- peer: the Rust ``tokenizers`` library's ``encode_batch`` on the already split paragraphs, in this
  process, with its own thread pool (its default), i.e. tokenization alone. ``encode_batch_fast``
  (no offsets) is shown too, as a stricter peer.

Runs alternate (peer, ours, peer, ours, ...) and the median of ``--repeats`` is reported, in
tokens per second (document text tokens, EOS not counted). Goal: ours >= 0.8 x ``encode_batch``
with 2 processes. Absolute figures depend on the machine and its load; the ratio is the result.

    python benchmarks/data.py --mb 8 --num-proc 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turing_models.data import load_tokenizer, read_manifest, tokenize_corpus  # noqa: E402

CORPUS = ROOT / "recipes" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=8.0, help="corpus size in MB (default: 8)")
    parser.add_argument("--num-proc", type=int, default=2, help="our tokenizer processes (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side (default: 3)")
    parser.add_argument("--tokenizer", default="gpt2-bpe", help="tokenizer (default: gpt2-bpe)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    tok = load_tokenizer(args.tokenizer)
    backend = tok.backend_tokenizer
    base = CORPUS.read_text(encoding="utf-8")
    copies = max(1, round(args.mb * 1e6 / len(base.encode())))
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = work / "corpus.txt"
        corpus.write_text("\n\n".join([base.strip("\n")] * copies) + "\n", encoding="utf-8")
        size_mb = corpus.stat().st_size / 1e6
        docs = [d.rstrip("\n") for d in re.split(r"\n\s*\n", corpus.read_text(encoding="utf-8")) if d.strip()]

        peer, peer_fast, ours = [], [], []
        text_tokens = None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            encodings = backend.encode_batch(docs, add_special_tokens=False)
            peer.append(time.perf_counter() - t0)
            n_peer = sum(len(e.ids) for e in encodings)
            del encodings
            t0 = time.perf_counter()
            backend.encode_batch_fast(docs, add_special_tokens=False)
            peer_fast.append(time.perf_counter() - t0)

            out = work / f"out{r}"
            t0 = time.perf_counter()
            tokenize_corpus(corpus, out, tokenizer=tok, num_proc=args.num_proc, progress=False)
            ours.append(time.perf_counter() - t0)
            m = read_manifest(out)
            splits = m["splits"].values()
            text_tokens = sum(s["tokens"] for s in splits) - sum(s["documents"] for s in splits)
            assert text_tokens == n_peer, (text_tokens, n_peer)  # same work on both sides
            shutil.rmtree(out)

        peer_tps = text_tokens / statistics.median(peer)
        fast_tps = text_tokens / statistics.median(peer_fast)
        ours_tps = text_tokens / statistics.median(ours)
        print(f"corpus: {size_mb:.1f} MB, {len(docs):,} documents, {text_tokens:,} tokens ({args.tokenizer})")
        print(f"peer  tokenizers encode_batch (all threads):      {peer_tps:>12,.0f} tokens/s")
        print(f"peer  tokenizers encode_batch_fast (all threads): {fast_tps:>12,.0f} tokens/s")
        print(f"ours  tokenize_corpus, {args.num_proc} processes, read+write: {ours_tps:>12,.0f} tokens/s")
        print(f"ratio ours / encode_batch:      {ours_tps / peer_tps:.2f}  (goal >= 0.8)")
        print(f"ratio ours / encode_batch_fast: {ours_tps / fast_tps:.2f}")
        print("reproduce: python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "mb": size_mb, "tokens": text_tokens, "num_proc": args.num_proc,
                "peer_encode_batch_tps": peer_tps, "peer_encode_batch_fast_tps": fast_tps,
                "ours_tps": ours_tps, "ratio": ours_tps / peer_tps,
            }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
