"""One command on a GPU machine: install, test and benchmark the kernels against their goals.

    make gpu-check                      # or: python3 benchmarks/gpu_check.py [--budget 450] [--out DIR]

Steps, each in its own process under its own time limit (a later step runs even when an earlier one
failed or timed out), all inside ``--budget`` seconds (default 450, under 8 minutes with set-up):

1. ``setup``: a virtual environment ``.venv-gpu`` (with the system site packages, so a preinstalled
   CUDA PyTorch is reused) and ``pip install -e . pytest pytest-xdist``: the project, PyTorch with
   Triton, nothing from the dev extra. ``--python PATH`` uses an existing interpreter instead.
2. ``warm``: compiles the attention kernels the benchmark uses, one process per (head dim, causal),
   in parallel, into the Triton cache the later steps share.
3. ``tests``: ``pytest -n 8 -m "not slow" tests/kernels`` natively, while step 2 runs (bf16 and the
   GPU-only tests included; the slow test is the compile proof, a CPU check).
4. ``attention``: forward+backward time of ``flash_attention`` against SDPA pinned to the flash
   backend, head dims 128, 152, 64; sequences 2k, 4k, 8k; causal and not; 16k tokens per batch,
   model width 2048, the model's ``[B, T, H, 3, D]`` projection layout.
5. ``cross_entropy``: peak memory and time of ``fused_linear_cross_entropy`` against
   ``F.cross_entropy(F.linear(h, W).float(), y)``, forward+backward, 16k tokens, hidden 2048,
   vocab 50304.
6. ``train``: training steps of the largest TuringNLG scale that fits (1.3B first, then smaller),
   bf16 autocast, AdamW, fused kernels and attention "turing", sequence 2048: tokens/s and MFU
   (``6N + 12LHQT`` FLOPs per token against the device's data-sheet bf16 peak).

Results: ``gpu_check.json`` (rewritten after every step, so a run cut short keeps what finished),
one log per step, and ``summary.txt`` with PASS / MISS against the goals:

* attention fwd+bwd >= 1.0x SDPA-flash at d128 and >= 1.2x at d152, every sequence, causal and not;
* fused linear-CE peak memory <= 1/4 of unfused, time <= 1.10x unfused;
* TuringNLG training step MFU >= 50 %.

Without an NVIDIA GPU it stops at once with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = ["-q", "-n", "8", "-m", "not slow", "-p", "no:cacheprovider", "tests/kernels"]
GOALS = {"attn_d128": 1.0, "attn_d152": 1.2, "ce_mem": 0.25, "ce_time": 1.10, "mfu": 0.50}


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and "GPU" in res.stdout


# ------------------------------------------------------------------------------------------------
# Step bodies (run as `python benchmarks/gpu_check.py --step NAME --result FILE` in the set-up python)
# ------------------------------------------------------------------------------------------------

def _timer(fn, warmup=3, reps=10):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _qkv(seq, head_dim, dtype, tokens=16384, width=2048):
    import torch

    heads, batch = max(1, width // head_dim), max(1, tokens // seq)
    qkv = torch.randn(batch, seq, heads, 3, head_dim, device="cuda", dtype=dtype)
    return [t.detach().requires_grad_() for t in qkv.permute(3, 0, 2, 1, 4).unbind(0)], batch, heads


def step_warm(out, args):
    import torch
    from turing_kernels import flash_attention

    head_dim, causal = int(args.head_dim), args.causal == "1"
    (q, k, v), _, _ = _qkv(2048, head_dim, torch.bfloat16)
    o = flash_attention(q, k, v, causal=causal)
    o.backward(torch.randn_like(o))
    torch.cuda.synchronize()
    out["warm"] = f"d{head_dim} causal={causal}"


def step_attention(out, args):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from turing_kernels import _attention_triton as kern
    from turing_kernels import flash_attention

    rows = out.setdefault("rows", [])
    for head_dim in (128, 152, 64):
        for seq in (2048, 4096, 8192):
            for causal in (True, False):
                (q, k, v), batch, heads = _qkv(seq, head_dim, torch.bfloat16)
                do = torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16)

                def ours():
                    flash_attention(q, k, v, causal=causal).backward(do)

                def sdpa():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)

                with torch.no_grad():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    err = (flash_attention(q, k, v, causal=causal) - ref).abs().max().item()
                t_ours, t_sdpa = _timer(ours), _timer(sdpa)
                flops = 4 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0) * 3.5
                # the forward tile the autotuner measured best for this shape, and whether it loads through TMA
                best = getattr(kern.attn_fwd_tuned, "best_config", None)
                rows.append(dict(head_dim=head_dim, seq=seq, causal=causal, batch=batch, heads=heads,
                                 ours_ms=t_ours, sdpa_flash_ms=t_sdpa, speedup=t_sdpa / t_ours,
                                 ours_tflops=flops / t_ours / 1e9, max_abs_err=err,
                                 fwd_config=str(best) if best is not None else None,
                                 fwd_tma=bool(best.kwargs.get("USE_TMA")) if best is not None else None))
                _save(out, args)  # partial results survive a timeout
                del q, k, v, do
                torch.cuda.empty_cache()


def step_cross_entropy(out, args):
    import torch
    import torch.nn.functional as F
    from turing_kernels import fused_linear_cross_entropy

    n, hidden, vocab = 16384, 2048, 50304
    h = torch.randn(n, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (n,), device="cuda")

    def fused():
        fused_linear_cross_entropy(h, w, y).backward()

    def unfused():
        F.cross_entropy(F.linear(h, w).float(), y).backward()

    def peak(fn):
        h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    out.update(fused_peak_bytes=peak(fused), unfused_peak_bytes=peak(unfused))
    out.update(fused_ms=_timer(fused), unfused_ms=_timer(unfused))
    out["mem_ratio"] = out["fused_peak_bytes"] / out["unfused_peak_bytes"]
    out["time_ratio"] = out["fused_ms"] / out["unfused_ms"]


def step_train(out, args):
    import torch
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training.flops import device_peak_flops, model_flops_per_token

    seq = 2048
    for scale, micro in (("1.3b", 8), ("760m", 8), ("350m", 8), ("125m", 8)):
        try:
            config = TuringNLGConfig.from_name(scale, attention_dropout=0.0, hidden_dropout=0.0)
            for flag in ("fused_layernorm", "fused_bias_gelu", "fused_cross_entropy"):
                if hasattr(config, flag):
                    setattr(config, flag, True)
            config._attn_implementation = "turing"
            model = TuringNLGForCausalLM(config).cuda()
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            ids = torch.randint(0, config.real_vocab_size, (micro, seq), device="cuda")

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            ms = _timer(step, warmup=3, reps=8)
        except torch.cuda.OutOfMemoryError:
            out.setdefault("oom", []).append(scale)
            model = opt = None
            torch.cuda.empty_cache()
            continue
        tokens_per_s = micro * seq / (ms / 1e3)
        flops_tok = model_flops_per_token(model, seq)
        peak = float(device_peak_flops())
        out.update(scale=scale, micro_batch=micro, seq=seq, step_ms=ms, tokens_per_s=tokens_per_s,
                   flops_per_token=flops_tok, peak_flops=peak, mfu=tokens_per_s * flops_tok / peak,
                   max_memory_gib=torch.cuda.max_memory_allocated() / 2**30)
        return


STEPS = {"warm": step_warm, "attention": step_attention, "cross_entropy": step_cross_entropy, "train": step_train}


def _save(out, args):
    Path(args.result).write_text(json.dumps(out, indent=1))


def run_step_here(args) -> int:
    out = {}
    try:
        STEPS[args.step](out, args)
    finally:
        _save(out, args)
    return 0


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

class Driver:
    def __init__(self, budget, out_dir: Path):
        self.t0 = time.time()
        self.budget = budget
        self.out_dir = out_dir
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}
        self.summary = []

    def left(self):
        return self.budget - (time.time() - self.t0)

    def say(self, line):
        line = f"[t+{time.time() - self.t0:4.0f}s] {line}"
        print(line, flush=True)
        self.summary.append(line)
        (self.out_dir / "summary.txt").write_text("\n".join(self.summary) + "\n")

    def save(self):
        (self.out_dir / "gpu_check.json").write_text(json.dumps(self.results, indent=1))

    def run(self, name, cmd, cap, reserve=0, env=None):
        limit = min(cap, self.left() - reserve)
        if limit < 15:
            self.say(f"SKIP  {name}: {self.left():.0f} s left")
            self.results["steps"][name] = {"rc": None, "skipped": True}
            self.save()
            return None
        self.say(f"START {name} (limit {limit:.0f} s)")
        t = time.time()
        with open(self.out_dir / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc = "timeout"
        self.results["steps"][name] = {"rc": rc, "seconds": round(time.time() - t, 1)}
        self.say(f"END   {name}: rc={rc}, {time.time() - t:.0f} s")
        self.save()
        return rc

    def run_python_step(self, py, name, cap, reserve=0, extra=()):
        result = self.out_dir / f"{name}.json"
        rc = self.run(name, [py, str(Path(__file__).resolve()), "--step", name, "--result", str(result), *extra],
                      cap, reserve, env=self.env)
        if result.exists():
            try:
                self.results[name] = json.loads(result.read_text())
            except json.JSONDecodeError:
                pass
        self.save()
        return rc


def setup_python(driver, args) -> str:
    if args.python:
        return args.python
    venv = REPO / ".venv-gpu"
    py = venv / "bin" / "python"
    script = (
        f"set -e; [ -x {py} ] || {sys.executable} -m venv --system-site-packages {venv}; "
        f"{py} -m pip install -q --upgrade pip; "
        f"{py} -m pip install -q -e . pytest pytest-xdist; "
        f"{py} -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || "
        f"{py} -m pip install -q --upgrade --ignore-installed torch; "
        f"{py} -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, "
        f"torch.cuda.get_device_name())'"
    )
    driver.run("setup", ["bash", "-c", script], cap=240, reserve=150)
    return str(py)


def goals_summary(driver):
    res = driver.results
    lines = []
    rows = res.get("attention", {}).get("rows", [])
    for head_dim, key in ((128, "attn_d128"), (152, "attn_d152"), (64, None)):
        mine = [r for r in rows if r["head_dim"] == head_dim]
        if not mine:
            if key:
                lines.append(f"MISS  attention d{head_dim} >= {GOALS[key]}x SDPA-flash: not measured")
            continue
        worst = min(r["speedup"] for r in mine)
        detail = ", ".join(f"{r['seq'] // 1024}k{'c' if r['causal'] else ''} {r['speedup']:.2f}x" for r in mine)
        if key:
            verdict = "PASS" if worst >= GOALS[key] and len(mine) == 6 else "MISS"
            lines.append(f"{verdict}  attention d{head_dim} fwd+bwd >= {GOALS[key]}x SDPA-flash: worst {worst:.2f}x "
                         f"({len(mine)}/6 shapes: {detail})")
        else:
            lines.append(f"info  attention d64 fwd+bwd vs SDPA-flash: {detail}")
    ce = res.get("cross_entropy", {})
    if "mem_ratio" in ce:
        ok = ce["mem_ratio"] <= GOALS["ce_mem"] and ce["time_ratio"] <= GOALS["ce_time"]
        lines.append(f"{'PASS' if ok else 'MISS'}  fused linear-CE: peak {ce['mem_ratio']:.3f}x of unfused "
                     f"(goal <= {GOALS['ce_mem']}), time {ce['time_ratio']:.2f}x (goal <= {GOALS['ce_time']})")
    else:
        lines.append("MISS  fused linear-CE memory/time: not measured")
    tr = res.get("train", {})
    if "mfu" in tr:
        lines.append(f"{'PASS' if tr['mfu'] >= GOALS['mfu'] else 'MISS'}  TuringNLG {tr['scale']} training step MFU "
                     f"{100 * tr['mfu']:.1f} % (goal >= 50 %), {tr['tokens_per_s']:.0f} tokens/s, "
                     f"{tr['step_ms']:.0f} ms/step")
    else:
        lines.append("MISS  training-step MFU: not measured")
    steps = res.get("steps", {})
    tests = steps.get("tests", {}).get("rc")
    lines.append(f"{'PASS' if tests == 0 else 'MISS'}  pytest tests/kernels on the GPU (rc={tests})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole run (default 450)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"))
    parser.add_argument("--python", help="an existing python with CUDA PyTorch and the project: skips set-up")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--head-dim", help=argparse.SUPPRESS)
    parser.add_argument("--causal", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_step_here(args)
    if not _has_gpu():
        print("gpu-check: no NVIDIA GPU here (nvidia-smi finds none); run it on an H100/H200 machine.", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    driver = Driver(args.budget, out_dir)
    driver.env = dict(os.environ, TRITON_CACHE_DIR=str(out_dir / "triton_cache"), TRITON_DEFAULT_FP_FUSION="1",
                      PYTHONUNBUFFERED="1")
    driver.env.pop("TRITON_INTERPRET", None)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    driver.results["device"] = smi.stdout.strip()
    driver.say(f"device: {smi.stdout.strip()}")
    py = setup_python(driver, args)

    # Warm the Triton cache: one process per (head dim, causal), in parallel.
    warm_limit = min(150, driver.left() - 200)
    if warm_limit > 20:
        driver.say(f"START warm (6 processes, limit {warm_limit:.0f} s)")
        procs = []
        for d in (128, 152, 64):
            for c in ("1", "0"):
                log = open(out_dir / f"warm_d{d}_c{c}.log", "w")
                procs.append(subprocess.Popen([py, str(Path(__file__).resolve()), "--step", "warm", "--result",
                                               str(out_dir / f"warm_d{d}_c{c}.json"), "--head-dim", str(d),
                                               "--causal", c], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                              env=driver.env, start_new_session=True))
        # The kernel tests run meanwhile (their kernels compile in the same cache).
        driver.run("tests", [py, "-m", "pytest", *PYTEST, "--junitxml", str(out_dir / "pytest.xml")],
                   cap=warm_limit, env=driver.env)
        for p in procs:
            try:
                p.wait(timeout=max(1, warm_limit - (time.time() - driver.t0)))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        driver.say("END   warm: " + ", ".join(str(p.returncode) for p in procs))
    else:
        driver.run("tests", [py, "-m", "pytest", *PYTEST], cap=120, env=driver.env)
    driver.run_python_step(py, "cross_entropy", cap=60, reserve=150)
    driver.run_python_step(py, "attention", cap=200, reserve=70)
    driver.run_python_step(py, "train", cap=120)
    for line in goals_summary(driver):
        driver.say(line)
    driver.results["goals"] = goals_summary(driver)
    driver.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
