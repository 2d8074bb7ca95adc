#!/usr/bin/env python
"""Peak memory while loading a checkpoint: does ``from_pretrained`` hold two copies of the weights?

Saves a TuringNLG checkpoint of about ``--size-mb`` (fp32 safetensors), the same weights as a GPT-2
checkpoint, then loads each in a fresh subprocess and measures the peak resident memory above the
process's baseline after imports (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just
before loading), up to the point where every weight has been read once (safetensors files are
memory-mapped, so untouched weights would not count). Three loads, alternating over ``--repeats`` rounds:

* ``turing``: ``TuringNLGForCausalLM.from_pretrained(<turing folder>)`` (native checkpoint);
* ``turing<-gpt2``: ``TuringNLGForCausalLM.from_pretrained(<gpt2 folder>)`` (converted on load);
* ``peer gpt2``: transformers' ``GPT2LMHeadModel.from_pretrained(<gpt2 folder>)``.

Goal: peak <= 1.3x the weights' size (one copy plus working memory). Usage::

    python benchmarks/load.py                    # ~400 MB checkpoint
    python benchmarks/load.py --size-mb 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.3
HIDDEN = 1024


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(kind: str, folder: str) -> None:
    """Runs in a fresh process: import, measure the baseline, load, report the peak."""
    import gc

    import torch
    import transformers

    import turing_models.nlg as nlg

    torch.set_num_threads(1)
    gc.collect()
    baseline = _rss_kb("VmRSS")
    try:  # reset the high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        resettable = True
    except OSError:
        resettable = False
    start = time.perf_counter()
    if kind == "peer gpt2":
        model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    else:
        model = nlg.TuringNLGForCausalLM.from_pretrained(folder)
    # safetensors are memory-mapped: pages become resident when read. Read every weight once so
    # the peak covers the whole model in memory, not just the untouched mapping.
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for p in model.parameters())
    seconds = time.perf_counter() - start
    peak = _rss_kb("VmHWM")
    after = _rss_kb("VmRSS")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"baseline_kb": baseline, "peak_kb": peak, "after_kb": after, "param_bytes": params,
                      "seconds": seconds, "resettable": resettable, "checksum": checksum}))


def build(folder: Path, size_mb: float, hidden: int = HIDDEN) -> tuple[Path, Path, int]:
    """A TuringNLG checkpoint of about ``size_mb`` and the same weights as a GPT-2 checkpoint."""
    import torch

    from turing_models.nlg.adapter_gpt2 import export_gpt2
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    vocab = 50257
    embed_mb = (vocab + 1024) * hidden * 4 / 2**20
    layer_mb = (12 * hidden * hidden + 13 * hidden) * 4 / 2**20
    layers = max(1, round((size_mb - embed_mb) / layer_mb))
    config = TuringNLGConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=hidden // 64, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = TuringNLGForCausalLM(config)
    model.save_pretrained(folder / "turing")
    export_gpt2(model, folder / "gpt2")
    weights = (folder / "turing" / "model.safetensors").stat().st_size
    return folder / "turing", folder / "gpt2", weights


def measure(kind: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise RuntimeError(f"loading {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=400.0, help="checkpoint size to build (fp32)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each loads every kind once")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}

    kinds = ("turing", "turing<-gpt2", "peer gpt2")
    with tempfile.TemporaryDirectory(prefix="turing-load-bench-") as tmp:
        turing_dir, gpt2_dir, weights = build(Path(tmp), args.size_mb)
        folders = {"turing": turing_dir, "turing<-gpt2": gpt2_dir, "peer gpt2": gpt2_dir}
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                runs[kind].append(measure(kind, folders[kind]))
    print(f"checkpoint: {weights / 2**20:.0f} MB of fp32 safetensors weights (TuringNLG, hidden {HIDDEN})")
    if not all(r["resettable"] for rs in runs.values() for r in rs):
        print("note: /proc/self/clear_refs is not writable here; the peak includes the import phase")
    summary = {"weights_mb": weights / 2**20}
    print(f"{'load':<14} {'peak above baseline':>20} {'ratio to weights':>17} {'load + read':>12}")
    for kind in kinds:
        best = min(runs[kind], key=lambda r: r["peak_kb"] - r["baseline_kb"])
        peak_mb = (best["peak_kb"] - best["baseline_kb"]) / 1024
        ratio = peak_mb * 2**20 / weights
        seconds = min(r["seconds"] for r in runs[kind])
        summary[kind] = {"peak_mb": peak_mb, "ratio": ratio, "seconds": seconds}
        print(f"{kind:<14} {peak_mb:>17.0f} MB {ratio:>16.2f}x {seconds:>11.2f}s")
    ours, peer = summary["turing"]["ratio"], summary["peer gpt2"]["ratio"]
    print(f"TuringNLG / transformers GPT-2 peak ratio: {ours / peer:.2f}")
    for kind, label in (("turing", "TuringNLG checkpoint"), ("turing<-gpt2", "GPT-2 checkpoint converted on load")):
        ratio = summary[kind]["ratio"]
        print(f"goal peak <= {GOAL}x the weights, {label}: {ratio:.2f}x, {'met' if ratio <= GOAL else 'MISSED'}")
    print("reproduce: python " + " ".join(shlex.quote(a) for a in ["benchmarks/load.py", *(argv or sys.argv[1:])]))
    return summary


if __name__ == "__main__":
    main()
