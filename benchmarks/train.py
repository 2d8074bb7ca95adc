#!/usr/bin/env python
"""Full training steps: TuringNLG (our trainer's path) vs transformers' GPT2LMHeadModel.

Both models have the GPT-2 small shape (12 layers, hidden 768, 12 heads, 50304 embedding rows,
~124M parameters) and train at sequence 512 with the same AdamW hyper-parameters, in one process,
alternating rounds so that both see the same machine load. A step is forward + backward + clip +
optimizer step.

* ours: ``TuringNLGForCausalLM`` (SDPA attention, fused QKV, packed ``shift_labels`` so no shifted
  copy of the logits, the lean cross-entropy of ``turing_models.layers.loss``) with the trainer's
  optimizer (``build_optimizer``: fused AdamW, no decay on norms / biases / embeddings);
* peers: ``GPT2LMHeadModel`` (SDPA) with HF ``labels``, trained two ways a user would:
  ``torch.optim.AdamW`` with its defaults (plain), and ``torch.optim.AdamW(fused=True)``, which
  the HF Trainer picks by default (``adamw_torch_fused``) on recent PyTorch. Each peer has its own
  model (same initialisation), so no optimizer state is shared.

Prints tokens/s of each, the ratios of ours over both peers, and MFU (6N + 12LHQT, see
turing_models/training/flops.py) against ``device_peak_flops``: a GPU's data-sheet peak, or on
CPU the theoretical fp32 vector peak of the threads in use (never below what was achieved, so MFU
never reads above 100 %). Absolute numbers mean little on a shared CPU; the ratios are the figures.

    python benchmarks/train.py                      # defaults: batch 2 x 512, 5 rounds
    python benchmarks/train.py --batch 4 --rounds 8 --layers 12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
    from turing_models.training.config import TrainerConfig
    from turing_models.training.optim import build_optimizer

    torch.manual_seed(0)
    ours_cfg = TuringNLGConfig.from_name(
        "125m", num_hidden_layers=args.layers, max_position_embeddings=args.seq, hidden_dropout=0.0,
        attention_dropout=0.0, activation="gelu_tanh", attn_implementation="sdpa")
    ours = TuringNLGForCausalLM(ours_cfg)
    tc = TrainerConfig(lr=3e-4, weight_decay=0.1, beta2=0.95)
    ours_opt = build_optimizer(ours, tc)

    peer_cfg = GPT2Config(n_layer=args.layers, n_embd=768, n_head=12, n_positions=args.seq, vocab_size=50304,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    peer = GPT2LMHeadModel(peer_cfg)
    peer_opt = torch.optim.AdamW(peer.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    torch.manual_seed(0)
    fused = GPT2LMHeadModel(peer_cfg)
    fused_opt = torch.optim.AdamW(fused.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    return {"ours": (ours, ours_opt), "peer": (peer, peer_opt), "fused": (fused, fused_opt)}


def step_ours(model, opt, ids):
    loss = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def step_peer(model, opt, ids):
    loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rounds", type=int, default=5,
                   help="timed rounds per model (alternating); the best of each is compared (fewer read noisier)")
    p.add_argument("--steps", type=int, default=2, help="training steps per round")
    args = p.parse_args()

    from turing_models.training.flops import count_matmul_params, device_peak_flops, flops_per_token, mfu

    runs = build(args)
    steps = {"ours": step_ours, "peer": step_peer, "fused": step_peer}
    ids = torch.randint(0, 50257, (args.batch, args.seq + 1))
    for name, (model, opt) in runs.items():  # warm-up (allocator, optimizer state)
        steps[name](model, opt, ids)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name](model, opt, ids)
            times[name].append((time.perf_counter() - start) / args.steps)
    peak = device_peak_flops()
    tokens = args.batch * args.seq
    n = count_matmul_params(runs["ours"][0])
    fpt = flops_per_token(n, args.layers, 12, 64, args.seq)
    best = {k: min(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in best.items()}
    for k in tps:  # the peak is at least the best rate achieved, before any MFU is printed
        peak.observe(tps[k] * fpt)
    print(f"model: {args.layers} layers, hidden 768, 12 heads, vocab 50304, {n / 1e6:.1f} M params in matmuls; "
          f"batch {args.batch} x {args.seq}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"peak for MFU: {peak.value / 1e9:.1f} GFLOP/s ({peak.source})")
    labels = {"ours": "TuringNLG + trainer optimizer", "peer": "HF GPT-2 + AdamW (plain)",
              "fused": "HF GPT-2 + AdamW(fused=True)"}
    for k, label in labels.items():
        print(f"{label:<32} {tps[k]:8.1f} tokens/s   step {best[k]:.2f} s   MFU {mfu(tps[k], fpt, peak):6.1%}")
    print(f"ratio ours / plain-AdamW peer: {tps['ours'] / tps['peer']:.2f}x;  ours / fused-AdamW peer (HF Trainer "
          f"default): {tps['ours'] / tps['fused']:.2f}x   (best of {args.rounds} alternating rounds; goal >= 1.25x "
          "over the fused peer)")
    print("reproduce: python benchmarks/train.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
