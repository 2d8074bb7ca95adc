"""One training run of a tiny TuringNLG, as one rank of a multi-node job (or alone).

    python multinode_worker.py --data DIR --out DIR --engine none --micro 4
    torchrun --nnodes 2 --node_rank N --nproc_per_node 1 --rdzv-endpoint 127.0.0.1:PORT \\
        multinode_worker.py --data DIR --out DIR --engine fsdp2 --micro 2

Rank 0 writes ``<out>/result.json``: the per-step losses and where each rank ran (node rank,
local rank, processes per node) as the launcher reported it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _tiny import SEQ, tiny_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="none")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--dp-replicate", type=int, default=1, help="HSDP: replicas (train.parallel.dp_replicate)")
    args = p.parse_args()

    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig
    from turing_models.training.config import ParallelConfig

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ds = PackedDataset(args.data, "train", seq_len=SEQ, seed=0, shuffle=True, rank=rank, world_size=world)
    model = tiny_model(hidden_dropout=0.0, attention_dropout=0.0)
    cfg = TrainerConfig(run_name="run", output_dir=args.out, max_steps=args.steps,
                        global_batch_size=args.global_batch, micro_batch_size=args.micro, lr=3e-3,
                        warmup_steps=1, log_every=1, progress=False, tensorboard=False,
                        distributed=args.engine, parallel=ParallelConfig(dp_replicate=args.dp_replicate))
    trainer = Trainer(model, ds, config=cfg)
    trainer.fit()
    acc = trainer.accelerator
    where = torch.tensor([int(os.environ.get("GROUP_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                          int(os.environ.get("LOCAL_WORLD_SIZE", 1)), rank])
    placements = acc.gather(where.reshape(1, -1)).tolist() if acc.num_processes > 1 else [where.tolist()]
    if acc.is_main_process:
        result = {"losses": trainer.losses, "world": acc.num_processes,
                  "model_sharded": type(next(trainer.model.parameters())).__name__ == "DTensor",
                  "distributed_type": str(acc.distributed_type), "model_class": type(trainer.model).__name__,
                  "placements": placements}
        Path(args.out, "result.json").write_text(json.dumps(result))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
