"""A tiny pretraining run as a recipe runs it (``cli_main``, the recipe's train/evaluate/export tail),
with fault hooks, for the reliability tests:

    python run_tiny.py --data DIR --out DIR --steps 6 --save-every 2 [--resume auto]
        [--kill-at POINT] [--sigterm-after-step N] [--fsize-limit BYTES] [--distributed ENGINE]

``--kill-at`` sends SIGKILL to this process at one moment: ``step-N`` (after optimizer step N),
``ckpt-N-optimizer`` (while writing checkpoint N, after its model file), ``ckpt-N-publish``
(checkpoint N complete in its temporary folder, before the rename), ``final-weights`` (final export:
weights written, before the rename). Prints the losses as one JSON line on success.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))

from turing_models.errors import cli_main  # noqa: E402


@dataclass
class RunConfig:
    resume: str | None = None
    train: dict = field(default_factory=dict)


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_hook(point: str, trainer) -> None:
    import turing_models.io as io
    from turing_models.training import checkpointer as ckmod
    from turing_models.training import trainer as trmod

    if point.startswith("step-"):
        n = int(point.split("-")[1])
        original = trainer.train_step

        def step():
            loss = original()
            if trainer.step == n:
                _kill()
            return loss

        trainer.train_step = step
    elif point.startswith("ckpt-"):
        _, n, where = point.split("-")
        if where == "optimizer":
            save_state = ckmod.save_state

            def hooked(folder, name, state):
                if name == "optimizer" and trainer.step == int(n):
                    _kill()
                return save_state(folder, name, state)

            ckmod.save_state = hooked
        else:
            publish = ckmod.publish_directory

            def hooked_publish(tmp, target, **kw):
                if Path(target).name == f"step-{int(n):08d}":
                    io.write_manifest(tmp)
                    _kill()
                return publish(tmp, target, **kw)

            ckmod.publish_directory = hooked_publish
    elif point == "final-weights":
        atomic_directory = trmod.atomic_directory

        import contextlib

        @contextlib.contextmanager
        def hooked_dir(target, **kw):
            with atomic_directory(target, **kw) as tmp:
                yield tmp
                if Path(target).name == "final":
                    _kill()

        trmod.atomic_directory = hooked_dir
    else:
        raise SystemExit(f"unknown kill point {point}")


@cli_main
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--resume", default=None)
    p.add_argument("--kill-at", default=None)
    p.add_argument("--sigterm-after-step", type=int, default=None)
    p.add_argument("--fsize-limit", type=int, default=None)
    p.add_argument("--distributed", default="none")
    args = p.parse_args()
    if args.fsize_limit:  # a "disk" that fills up: writes past this size fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

    import torch

    torch.set_num_threads(1)
    from _tiny import SEQ, tiny_model

    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig
    from turing_models.training.pretrain import train_evaluate_export

    train = PackedDataset(args.data, "train", seq_len=SEQ, seed=0)
    val = PackedDataset(args.data, "val", seq_len=SEQ, shuffle=False)
    cfg = TrainerConfig(run_name="run", output_dir=args.out, max_steps=args.steps, global_batch_size=4,
                        micro_batch_size=2, lr=3e-3, warmup_steps=2, log_every=1, eval_steps=2, progress=False,
                        tensorboard=False, save_every_steps=args.save_every, keep_last=10,
                        distributed=args.distributed, peak_flops=1e12)
    trainer = Trainer(tiny_model(), train, val, config=cfg)
    if args.kill_at:
        install_kill_hook(args.kill_at, trainer)
    if args.sigterm_after_step is not None:
        original = trainer.train_step

        def step():
            loss = original()
            if trainer.step == args.sigterm_after_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss

        trainer.train_step = step
    summary, _ = train_evaluate_export(trainer, RunConfig(resume=args.resume), True)
    print(json.dumps({"losses": trainer.losses, "final": summary["final"]}))


if __name__ == "__main__":
    main()
