#!/usr/bin/env python
"""Full training steps: TuringNLG (our trainer's path) vs transformers' GPT2LMHeadModel.

Both models have the GPT-2 small shape (12 layers, hidden 768, 12 heads, 50304 embedding rows,
~124M parameters) and train at sequence 512 with the same AdamW hyper-parameters, in one process,
alternating rounds so that both see the same machine load. A step is forward + backward + clip +
optimizer step.

* ours: ``TuringNLGForCausalLM`` (SDPA attention, fused QKV, packed ``shift_labels`` so no shifted
  copy of the logits) with the trainer's optimizer (``build_optimizer``: fused AdamW, no decay on
  norms / biases / embeddings);
* peer: ``GPT2LMHeadModel`` (SDPA) with ``torch.optim.AdamW`` defaults and HF ``labels``.

Prints tokens/s of each, the ratio, and MFU (6N + 12LHQT, see turing_models/training/flops.py)
against the fp32 matmul peak measured on this machine. Absolute numbers mean little on a shared
CPU; the ratio is the figure.

    python benchmarks/train.py                      # defaults: batch 2 x 512, 3 rounds
    python benchmarks/train.py --batch 4 --rounds 5 --layers 12
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
    peer = GPT2LMHeadModel(peer_cfg)
    peer_opt = torch.optim.AdamW(peer.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    return ours, ours_opt, peer, peer_opt


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
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per model (alternating)")
    p.add_argument("--steps", type=int, default=2, help="training steps per round")
    args = p.parse_args()

    from turing_models.training.flops import count_matmul_params, flops_per_token, measure_matmul_peak

    ours, ours_opt, peer, peer_opt = build(args)
    ids = torch.randint(0, 50257, (args.batch, args.seq + 1))
    for _ in range(1):  # warm-up (allocator, optimizer state)
        step_ours(ours, ours_opt, ids)
        step_peer(peer, peer_opt, ids)
    times = {"ours": [], "peer": []}
    for _ in range(args.rounds):
        for name, fn, model, opt in (("ours", step_ours, ours, ours_opt), ("peer", step_peer, peer, peer_opt)):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn(model, opt, ids)
            times[name].append((time.perf_counter() - start) / args.steps)
    peak = measure_matmul_peak()
    tokens = args.batch * args.seq
    n = count_matmul_params(ours)
    fpt = flops_per_token(n, args.layers, 12, 64, args.seq)
    best = {k: min(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in best.items()}
    print(f"model: {args.layers} layers, hidden 768, 12 heads, vocab 50304, {n / 1e6:.1f} M params in matmuls; "
          f"batch {args.batch} x {args.seq}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for k, label in (("ours", "TuringNLG + trainer optimizer"), ("peer", "transformers GPT2LMHeadModel")):
        print(f"{label:<32} {tps[k]:8.1f} tokens/s   step {best[k]:.2f} s   MFU {tps[k] * fpt / peak:6.1%}")
    print(f"ratio (ours / peer): {tps['ours'] / tps['peer']:.2f}x   (best of {args.rounds} alternating rounds)")
    print("reproduce: python benchmarks/train.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
