"""One training run of a tiny TuringNLG on a PackedDataset; launched directly or by torchrun.

    python dist_worker.py --data DIR --out DIR --engine none --steps 4 --global-batch 4 --micro 4
    torchrun --nproc_per_node 2 dist_worker.py ... --engine zero3 --micro 2

Rank 0 writes ``<out>/result.json`` with the per-step losses (and the export path when asked); every
rank writes ``<out>/samples_rank<r>.json``: the (optimizer step, input_ids) of each sample it trained on.
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

from turing_models.errors import cli_main  # noqa: E402


@cli_main
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="none")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--export", action="store_true")
    p.add_argument("--fsize-limit", type=int, default=None,
                   help="a file-size limit (RLIMIT_FSIZE) standing in for a full disk")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this step as a SIGTERM does: checkpoint, then status interrupted")
    p.add_argument("--dp-replicate", type=int, default=1, help="HSDP: replicas (train.parallel.dp_replicate)")
    p.add_argument("--ds-native-save", default=None,
                   help="also write DeepSpeed's own checkpoint (engine.save_checkpoint) to this folder")
    args = p.parse_args()
    if args.fsize_limit:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig
    from turing_models.training.config import ParallelConfig

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ds = PackedDataset(args.data, "train", seq_len=SEQ, seed=0, shuffle=True, rank=rank, world_size=world)
    model = tiny_model(hidden_dropout=0.0, attention_dropout=0.0)
    cfg = TrainerConfig(run_name="run", output_dir=args.out, max_steps=args.steps,
                        global_batch_size=args.global_batch, micro_batch_size=args.micro, lr=3e-3,
                        warmup_steps=1, log_every=1, progress=False, tensorboard=False,
                        distributed=args.engine, save_every_steps=args.save_every, keep_last=5,
                        parallel=ParallelConfig(dp_replicate=args.dp_replicate))
    trainer = Trainer(model, ds, config=cfg)
    seen = []  # (optimizer step, input_ids) of every sample this rank trains on

    def recording_collate(samples):
        from torch.utils.data import default_collate

        seen.extend([trainer.step + 1, s["input_ids"].tolist()] for s in samples)
        return default_collate(samples)

    trainer.collate_fn = recording_collate
    if args.stop_after is not None:
        original = trainer.train_step

        def step_then_stop():
            loss = original()
            if trainer.step == args.stop_after:
                trainer.stop_signal = "SIGTERM"
            return loss

        trainer.train_step = step_then_stop
    summary = trainer.fit(resume=args.resume)
    final = str(trainer.save_final()) if args.export else None
    if args.ds_native_save:
        trainer.model.save_checkpoint(args.ds_native_save)  # the DeepSpeedEngine's own (pickled) layout
    acc = trainer.accelerator
    # (node, local rank, processes on the node, global rank) of every process
    where = torch.tensor([int(os.environ.get("GROUP_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                          int(os.environ.get("LOCAL_WORLD_SIZE", 1)), rank])
    placements = acc.gather(where.reshape(1, -1)).tolist() if acc.num_processes > 1 else [where.tolist()]
    if acc.is_main_process:
        result = {"losses": trainer.losses, "summary": summary, "final": final, "world": acc.num_processes,
                  "distributed_type": str(acc.distributed_type), "model_class": type(trainer.model).__name__,
                  "model_sharded": type(next(trainer.model.parameters())).__name__ == "DTensor",
                  "placements": placements}
        Path(args.out, "result.json").write_text(json.dumps(result))
    Path(args.out, f"samples_rank{rank}.json").write_text(json.dumps(seen))
    trainer.accelerator.wait_for_everyone()
    # Everything is written and every rank is here. Leave without running C++ static destructors:
    # DeepSpeed's CPU communication op was seen to abort there under load ("terminate called
    # without an active exception", SIGABRT after a finished run), failing a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
