#!/usr/bin/env python
"""Greedy decoding throughput with a KV cache: TuringNLG against transformers' GPT2LMHeadModel.

Both models hold the same weights (a GPT-2 checkpoint converted on load, random-initialised by
default so nothing is downloaded), run in this one process, alternating run by run, with the
same prompt and ``generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)``. Printed:
tokens/s of each (median over the runs), the ratio TuringNLG / GPT-2 (goal on CPU: >= 1.0) and
the command line that reproduces the measurement. On CPU the absolute numbers depend on the
machine; the ratio is the figure to compare.

    python benchmarks/generate.py                         # GPT-2 small shape, random weights
    python benchmarks/generate.py --model openai-community/gpt2   # a real checkpoint (folder or Hub id)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from turing_models.errors import UsageError, cli_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a GPT-2-family checkpoint folder or Hub id; default: random weights of --layers/--hidden/--heads")
    p.add_argument("--layers", type=int, default=12, help="layers of the random model (default 12)")
    p.add_argument("--hidden", type=int, default=768, help="hidden size of the random model (default 768)")
    p.add_argument("--heads", type=int, default=12, help="attention heads of the random model (default 12)")
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary of the random model (default 50257)")
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each model, alternating (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _time_generate(model, ids, mask, new_tokens, device) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return elapsed


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import GPT2Config, GPT2LMHeadModel

    from turing_models.nlg import TuringNLG

    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model
        if source is None:
            if args.hidden % args.heads:
                raise UsageError(f"--hidden {args.hidden} must be divisible by --heads {args.heads}.")
            config = GPT2Config(vocab_size=args.vocab, n_positions=max(1024, args.prompt_len + args.new_tokens),
                                n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
                                bos_token_id=None, eos_token_id=None)
            GPT2LMHeadModel(config).save_pretrained(tmp)
            source = tmp
        gpt2 = GPT2LMHeadModel.from_pretrained(source, dtype=dtype).to(args.device).eval()
        ours = TuringNLG.from_pretrained(source, dtype=dtype).to(args.device).eval()
    for m in (gpt2, ours):  # measure decoding, never stop early
        m.generation_config.eos_token_id = None

    vocab = min(gpt2.config.vocab_size, ours.config.real_vocab_size)
    if args.prompt_len + args.new_tokens > ours.config.max_position_embeddings:
        raise UsageError("--prompt-len + --new-tokens exceeds the model's context length.")
    ids = torch.randint(0, vocab, (args.batch, args.prompt_len), device=args.device)
    mask = torch.ones_like(ids)

    # same weights, same tokens: check before timing
    with torch.inference_mode():
        a = gpt2.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
        b = ours.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    same = bool(torch.equal(a, b))

    times = {"turing": [], "gpt2": []}
    models = {"turing": ours, "gpt2": gpt2}
    for i in range(args.warmup + args.runs):
        order = ("turing", "gpt2") if i % 2 == 0 else ("gpt2", "turing")
        for name in order:
            t = _time_generate(models[name], ids, mask, args.new_tokens, args.device)
            if i >= args.warmup:
                times[name].append(t)

    tokens = args.batch * args.new_tokens
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    ratio = tps["turing"] / tps["gpt2"]
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"greedy decoding, KV cache, {args.device} {args.dtype}, threads={torch.get_num_threads()}, "
          f"{n_params / 1e6:.1f}M parameters, batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, median of {args.runs} alternating runs")
    print(f"  identical greedy tokens: {same}")
    print(f"  TuringNLG          {tps['turing']:9.1f} tokens/s")
    print(f"  GPT2LMHeadModel    {tps['gpt2']:9.1f} tokens/s")
    print(f"  ratio TuringNLG / GPT2LMHeadModel: {ratio:.3f}  (goal on CPU: >= 1.0)")
    argv_list = sys.argv[1:] if argv is None else list(argv)
    print("reproduce: python benchmarks/generate.py " + " ".join(shlex.quote(a) for a in argv_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
