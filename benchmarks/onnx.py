#!/usr/bin/env python
"""CPU inference throughput: ONNX Runtime against PyTorch, for both families, in one process.

Each model is exported with ``turing_models.convert.onnx.export_onnx`` (checked against PyTorch
first), then the same workload runs in PyTorch (eager, ``torch.no_grad``, sdpa attention) and in
ONNX Runtime's CPU provider, alternating run by run, with the same number of threads. Printed per
workload: the median throughput of each, the ratio ONNX Runtime / PyTorch (> 1: ONNX Runtime is
faster) and the command line that reproduces it. Workloads:

* ``nlg prefill``: TuringNLG forward over ``batch x seq`` tokens (empty cache), tokens/s;
* ``nlg decode``: greedy decoding of ``--new-tokens`` tokens reusing the KV cache, tokens/s
  (PyTorch: a ``DynamicCache`` loop; ONNX Runtime: :class:`~turing_models.convert.onnx.OnnxCausalLM`);
* ``nlu forward``: TuringNLU masked-LM forward over ``batch x seq`` tokens, sequences/s.

    python benchmarks/onnx.py                     # the "tiny" scales of both families
    python benchmarks/onnx.py --nlg-scale 125m --nlu-scale base --threads 8
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and "import onnx" would find this
# file instead of the onnx package: drop the folder, add the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nlg-scale", default="tiny", help="TuringNLG scale (NLG_SCALES; default tiny)")
    p.add_argument("--nlu-scale", default="tiny", help="TuringNLU scale (NLU_SCALES; default tiny)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence (prompt length for decode)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="timed runs of each engine, alternating")
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: torch's)")
    return p.parse_args(argv)


def _alternate(fns: dict, runs: int) -> dict[str, float]:
    """Median seconds of each function, run alternately after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_nlg(args, tmp: Path) -> list[tuple]:
    from transformers.cache_utils import DynamicCache

    from turing_models.convert.onnx import OnnxCausalLM, export_onnx, session
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    torch.manual_seed(0)
    config = TuringNLGConfig.from_name(args.nlg_scale, hidden_dropout=0.0, attention_dropout=0.0,
                                       attn_implementation="sdpa")
    model = TuringNLGForCausalLM(config).eval()
    report = export_onnx(model, tmp / "nlg")
    lm = OnnxCausalLM(tmp / "nlg", threads=args.threads)
    seq = min(args.seq, config.max_position_embeddings - args.new_tokens)
    ids = torch.randint(0, config.real_vocab_size, (args.batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    sess = session(tmp / "nlg", args.threads)
    empty = lm.empty_cache(args.batch)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **empty}

    def torch_prefill():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def ort_prefill():
        sess.run(["logits"], feeds)

    def torch_decode():
        cache, step, m, out = DynamicCache(config=config), ids, mask, []
        with torch.no_grad():
            for _ in range(args.new_tokens):
                logits = model(input_ids=step, attention_mask=m, cache=cache, use_cache=True).logits
                step = logits[:, -1].argmax(-1, keepdim=True)
                m = torch.cat([m, torch.ones_like(step)], dim=1)
                out.append(step)
        return torch.cat(out, 1)

    def ort_decode():
        return lm.generate(ids.numpy(), mask.numpy(), max_new_tokens=args.new_tokens)[:, seq:]

    assert np.array_equal(torch_decode().numpy(), ort_decode()), "ONNX Runtime and PyTorch decode differently"
    prefill = _alternate({"torch": torch_prefill, "ort": ort_prefill}, args.runs)
    decode = _alternate({"torch": torch_decode, "ort": ort_decode}, args.runs)
    tokens = args.batch * seq
    new = args.batch * args.new_tokens
    label = f"nlg-{args.nlg_scale}"
    return [
        (f"{label} prefill {args.batch}x{seq}", "tokens/s", tokens / prefill["torch"], tokens / prefill["ort"],
         report["max_abs_diff"]),
        (f"{label} decode {args.batch}x{args.new_tokens} (cache)", "tokens/s", new / decode["torch"],
         new / decode["ort"], report["max_abs_diff"]),
    ]


def bench_nlu(args, tmp: Path) -> list[tuple]:
    from turing_models.convert.onnx import export_onnx, session
    from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM

    torch.manual_seed(0)
    config = TuringNLUConfig.from_name(args.nlu_scale, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = TuringNLUForMaskedLM(config).eval()
    report = export_onnx(model, tmp / "nlu")
    seq = min(args.seq, config.max_sequence_length)
    ids = torch.randint(5, config.vocab_size, (args.batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    sess = session(tmp / "nlu", args.threads)
    names = [i.name for i in sess.get_inputs()]
    feeds = {k: v.numpy() for k, v in {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}.items()
             if k in names}

    def torch_forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, token_type_ids=types)

    def ort_forward():
        sess.run(None, feeds)

    t = _alternate({"torch": torch_forward, "ort": ort_forward}, args.runs)
    return [(f"nlu-{args.nlu_scale} mlm forward {args.batch}x{seq}", "sequences/s", args.batch / t["torch"],
             args.batch / t["ort"], report["max_abs_diff"])]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="turing-onnx-bench-") as tmp:
        rows = bench_nlg(args, Path(tmp)) + bench_nlu(args, Path(tmp))
    print(f"ONNX Runtime vs PyTorch, CPU, {threads} threads, fp32, median of {args.runs} alternating runs")
    print(f"{'workload':<40} {'unit':<12} {'PyTorch':>10} {'ONNX RT':>10} {'ORT/PT':>7} {'max |diff|':>11}")
    for name, unit, pt, ort, diff in rows:
        print(f"{name:<40} {unit:<12} {pt:>10.1f} {ort:>10.1f} {ort / pt:>6.2f}x {diff:>11.2g}")
    print("reproduce: python " + " ".join(shlex.quote(a) for a in ["benchmarks/onnx.py", *(argv or sys.argv[1:])]))
    return rows


if __name__ == "__main__":
    main()
