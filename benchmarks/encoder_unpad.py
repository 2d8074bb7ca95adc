"""Unpadded TuringNLU encoder vs transformers' BertModel (SDPA), same weights, one process.

A batch of ``--batch`` sequences with lengths drawn uniformly from ``--min-len..--max-len`` is
right-padded to the longest one, as a tokenizer would pad it. Three forward passes (inference,
``torch.inference_mode``) hold the same BERT weights and run alternately, ``--repeats`` times each
after a warm-up:

* ``bert``: ``transformers.BertModel`` with ``attn_implementation="sdpa"``;
* ``turing``: ``TuringNLUModel`` loaded from the same folder, unpadded execution (the default);
* ``turing-padded``: the same model with ``unpad_inputs=False``.

Printed: tokens/s of each (real tokens only, padding excluded), the ratio turing / bert (goal on
CPU: >= 2.0) and turing / turing-padded, plus the command that reproduces the run. Absolute
numbers depend on the machine and its load; the ratios are what to compare.

    python benchmarks/encoder_unpad.py                     # base shapes, 32 x U(16, 512)
    python benchmarks/encoder_unpad.py --scale tiny --repeats 3
    python benchmarks/encoder_unpad.py --layers 4 --repeats 3   # base width, 4 layers: a quicker check
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time

import torch
import transformers

from turing_models.nlu import NLU_SCALES, TuringNLUModel


def build(scale: str, folder: str, layers: int = 0) -> None:
    shapes = NLU_SCALES[scale]
    config = transformers.BertConfig(
        hidden_size=shapes["hidden_size"], num_hidden_layers=layers or shapes["num_hidden_layers"],
        num_attention_heads=shapes["num_attention_heads"], intermediate_size=shapes["intermediate_size"],
    )
    transformers.BertModel(config).save_pretrained(folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=0,
                        help="override the depth for a quicker run (0: the scale's own; the ratio is per layer)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave PyTorch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 1 <= args.min_len <= args.max_len <= 512:
        parser.error("need 1 <= --min-len <= --max-len <= 512")

    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=gen)
    width = int(lengths.max())
    input_ids = torch.randint(1000, 30000, (args.batch, width), generator=gen)
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    real_tokens = int(lengths.sum())

    with tempfile.TemporaryDirectory() as folder:
        build(args.scale, folder, args.layers)
        bert = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        turing = TuringNLUModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        padded = TuringNLUModel.from_pretrained(folder, attn_implementation="sdpa", unpad_inputs=False).eval()

    models = {"bert": bert, "turing": turing, "turing-padded": padded}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        ref = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = turing(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        real = attention_mask.bool()
        err = (ref[real] - out[real]).abs().max().item()
        for step in range(args.repeats + 1):  # the first round warms up
            for name, model in models.items():
                start = time.perf_counter()
                model(input_ids=input_ids, attention_mask=attention_mask)
                if step:
                    times[name].append(time.perf_counter() - start)

    tps = {name: real_tokens / statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"{args.scale} shapes{f' ({args.layers} layers)' if args.layers else ''}, batch {args.batch} x U({args.min_len},{args.max_len}) -> {real_tokens} real tokens, "
          f"padded to {width} ({args.batch * width} slots); max |turing - bert| on real tokens {err:.2e}")
    for name in models:
        print(f"  {name:14s} {tps[name]:10.0f} tokens/s  (median of {args.repeats}: {statistics.median(times[name]) * 1e3:.0f} ms)")
    print(f"ratio turing / bert (sdpa):        {tps['turing'] / tps['bert']:.2f}x  (goal on CPU: >= 2.0)")
    print(f"ratio turing unpadded / padded:    {tps['turing'] / tps['turing-padded']:.2f}x")
    print("reproduce: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
