"""The shared Trainer: the training loop.

Pretraining and fine-tuning differ only in the model, the data and the loss the task supplies;
the Trainer owns everything else, on top of :class:`accelerate.Accelerator`:

* precision (bf16 on a GPU, fp32 on CPU), gradient accumulation, clipping, AdamW + schedule;
* the distributed engine: DDP, FSDP2, DeepSpeed ZeRO-2/3 (+ offload), picked by
  ``TrainerConfig.distributed`` under torchrun or by ``accelerate launch --config_file``;
* activation checkpointing and ``torch.compile``, applied from outside the model;
* logging: a tqdm bar (loss, lr, tokens/s, MFU, ETA), ``metrics.jsonl``, TensorBoard if installed;
* evaluation, checkpoint / resume (bitwise on CPU), SIGTERM/SIGINT handling, NaN/inf skipping,
  and the final consolidated ``save_pretrained`` export.

Engine setup lives in :mod:`.engine`, checkpoints (save, verify, resume) in :mod:`.checkpointer`;
this module is the loop.

Datasets: a map-style dataset is shuffled and sharded across ranks by the trainer; an
``IterableDataset`` (e.g. :class:`turing_models.data.PackedDataset`) shards itself, and its
``state_dict()`` / ``load_state_dict()`` carry the data position through checkpoints.
A batch is a dict passed to ``model(**batch)``; ``loss_fn(model, batch) -> loss`` replaces
``model(**batch).loss`` when given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import UsageError
from ..io import atomic_directory, raise_if_disk_full
from . import checkpoint as ckpt
from .checkpointer import Checkpointer, translate_position
from .config import TrainerConfig, save_config_yaml
from .engine import DISTRIBUTED_DIR, build_accelerator, fill_deepspeed_config  # noqa: F401  (re-exported)
from .engine import resolve_precision
from .flops import device_peak_flops, mfu, model_flops_per_token
from .optim import build_optimizer, build_scheduler
from .parallel import TrainerParallel

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Too many non-finite losses in a row."""


class Trainer:
    """Train ``model`` on ``train_dataset`` as ``config`` says.

    Args:
        model: a ``PreTrainedModel`` (or any module returning ``.loss`` for ``model(**batch)``).
        train_dataset / eval_dataset: map-style or iterable datasets of dict examples.
        config: the :class:`TrainerConfig`.
        collate_fn: batches examples (default: stack tensors).
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` (default: ``model(**batch).loss``).
        tokenizer: saved next to the final export.
        run_dir: the run folder (default ``config.output_dir / config.run_name``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        eval_dataset: Optional[Dataset] = None,
        *,
        config: TrainerConfig,
        collate_fn: Optional[Callable] = None,
        loss_fn: Optional[Callable] = None,
        tokenizer: Any = None,
        run_dir: Optional[str | os.PathLike] = None,
    ):
        from accelerate.utils import DistributedType, set_seed

        self.config = config
        set_seed(config.seed)
        self.accelerator = acc = build_accelerator(config, 1)
        self.accumulation = config.validate(acc.num_processes)  # the one place the config is checked
        acc.gradient_accumulation_steps = self.accumulation
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        fill_deepspeed_config(acc, config, self.accumulation)
        # train.parallel (tensor / 2-D parallelism): the mesh, and the data rank a TP group shares
        self.parallel = TrainerParallel.create(config, acc, resolve_precision(config.precision))
        self.data_rank, self.data_world = ((self.parallel.data_rank, self.parallel.data_world) if self.parallel
                                           else (acc.process_index, acc.num_processes))

        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.run_name
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.collate_fn = collate_fn
        self.loss_fn = loss_fn
        self.tokenizer = tokenizer
        self.fingerprint = ckpt.model_fingerprint(getattr(model, "config", None))
        self.model_config = getattr(model, "config", None)

        if config.activation_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise UsageError(f"{type(model).__name__} does not support activation checkpointing; "
                                 "set train.activation_checkpointing false")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "config"):
                model.config.use_cache = False
        self.n_model_params = sum(p.numel() for p in model.parameters())
        self._flops_model = model  # read its shape before wrapping
        if self.parallel is not None:  # train.parallel: sharded here (TP + FSDP2); Accelerate wraps the optimizer
            model = self.parallel.prepare_model(model)
            self.model, self.optimizer = model, acc.prepare(build_optimizer(model, config))
        else:
            optimizer = build_optimizer(model, config)
            self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = build_scheduler(self._base_optimizer(), config)
        self.checkpointer = Checkpointer(acc, self.model, self.optimizer, self.scheduler, self.checkpoints_dir,
                                         keep_last=config.keep_last, log=self._log)
        if config.compile:
            self.model = torch.compile(self.model)

        self.step = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.grad_norm: Optional[float] = None
        self.losses: list[float] = []
        self.eval_history: list[dict] = []
        self.stop_signal: Optional[str] = None
        self._data_iter: Optional[Iterator] = None
        self._flops_per_token: Optional[float] = None
        self._peak = config.peak_flops
        self._writer = None

    # ------------------------------------------------------------------ helpers

    def _base_optimizer(self) -> torch.optim.Optimizer:
        opt = self.optimizer
        while hasattr(opt, "optimizer") and not isinstance(opt, torch.optim.Optimizer):
            opt = opt.optimizer
        return opt

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def _to_device(self, batch: dict) -> dict:
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ data

    def _loader(self, dataset: Dataset, *, train: bool, skip_batches: int = 0, epoch: int = 0) -> DataLoader:
        micro = self.config.micro_batch_size
        # Its own generator: creating a DataLoader iterator must not draw from the global RNG,
        # or a resumed run (which creates one mid-way) would see different dropout masks.
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        if isinstance(dataset, IterableDataset):
            if train and hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            return DataLoader(dataset, batch_size=micro, collate_fn=self.collate_fn, num_workers=0,
                              drop_last=train, generator=generator)
        from torch.utils.data import DistributedSampler

        if train:
            sampler = DistributedSampler(dataset, num_replicas=self.data_world, rank=self.data_rank,
                                         shuffle=True, seed=self.config.seed, drop_last=True)
            sampler.set_epoch(epoch)
            indices = list(sampler)[skip_batches * micro:]
        else:
            indices = list(range(self.data_rank, len(dataset), self.data_world))
        return DataLoader(dataset, batch_size=micro, sampler=indices, collate_fn=self.collate_fn,
                          num_workers=self.config.num_workers, drop_last=train, generator=generator)

    def _next_batch(self) -> dict:
        ds = self.train_dataset
        for _ in range(2):
            if self._data_iter is None:
                skip = self.batches_in_epoch if not isinstance(ds, IterableDataset) else 0
                self._data_iter = iter(self._loader(ds, train=True, skip_batches=skip, epoch=self.epoch))
            try:
                batch = next(self._data_iter)
                self.batches_in_epoch += 1
                return batch
            except StopIteration:
                self._data_iter = None
                self.epoch += 1
                self.batches_in_epoch = 0  # the next loader calls set_epoch(epoch) on a streamed dataset
        raise UsageError("the training dataset yields no full micro-batch; use more data or a smaller "
                         "train.micro_batch_size")

    # ------------------------------------------------------------------ loss

    def compute_loss(self, batch: dict) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch)
        out = self.model(**batch)
        loss = out["loss"] if isinstance(out, dict) else out.loss
        if loss is None:
            raise UsageError("the model returned no loss for a training batch; give the batch labels or pass loss_fn")
        if hasattr(loss, "to_local"):  # a replicated DTensor (loss parallelism): every rank holds the whole value
            loss = loss.to_local()
        return loss

    def _loss_context(self):
        """torch's ``loss_parallel()`` around a loss and its backward when ``train.parallel.loss_parallel``."""
        return self.parallel.loss_context(self.model) if self.parallel is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ training

    @contextmanager
    def _stop_on_signals(self):
        """SIGTERM / SIGINT ask the loop to checkpoint and stop after the current step; a second
        signal stops at once. The previous handlers come back afterwards."""
        previous = {}

        def handler(signum, frame):
            if self.stop_signal is not None:  # second signal: stop now
                signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name
            self._log(f"received {self.stop_signal}: saving a checkpoint at the end of this step")

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _flags(self, *values: bool) -> list[bool]:
        """Any-of across ranks for a few booleans (one collective)."""
        t = torch.tensor([float(v) for v in values], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return [bool(x > 0) for x in t.tolist()]

    def train_step(self) -> Optional[float]:
        """One optimizer step over ``accumulation`` micro-batches. The mean loss, or None when a
        non-finite loss made the step skip."""
        acc, model = self.accelerator, self.model
        model.train()
        losses = []
        bad = False
        for _ in range(self.accumulation):
            batch = self._to_device(self._next_batch())
            if self._flops_per_token is None and "input_ids" in batch:
                self._flops_per_token = model_flops_per_token(self._flops_model, batch["input_ids"].shape[-1])
            n_tokens = batch["input_ids"].numel() if "input_ids" in batch else 0
            self.tokens_seen += n_tokens * self.data_world
            with acc.accumulate(model), self._loss_context():
                loss = self.compute_loss(batch)
                gathered = acc.gather(loss.detach().float().reshape(1))
                finite = bool(torch.isfinite(gathered).all())
                if finite and not bad:
                    acc.backward(loss)
                    losses.append(gathered.mean())
                else:
                    bad = True
                    if self.is_deepspeed:
                        raise TrainingStopped(
                            f"non-finite loss at step {self.step + 1} under DeepSpeed, which cannot skip a "
                            "step; lower train.lr or resume from the last checkpoint"
                        )
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps_in_row += 1
            self.bad_steps_total += 1
            self._log(f"step {self.step + 1}: non-finite loss, step skipped "
                      f"({self.bad_steps_in_row} in a row, {self.bad_steps_total} in total)")
            if self.bad_steps_in_row >= self.config.max_bad_steps:
                raise TrainingStopped(
                    f"{self.bad_steps_in_row} non-finite losses in a row (train.max_bad_steps="
                    f"{self.config.max_bad_steps}); lower train.lr or check the data, then resume from "
                    "the last checkpoint"
                )
            self.step += 1
            self.scheduler.step()
            return None
        self.bad_steps_in_row = 0
        self.grad_norm = None
        if self.config.grad_clip > 0:
            clip = self.parallel.clip_grad_norm_ if self.parallel is not None else acc.clip_grad_norm_
            norm = clip(model.parameters(), self.config.grad_clip)
            self.grad_norm = float(norm) if norm is not None else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean = float(torch.stack(losses).mean())
        self.losses.append(mean)
        return mean

    def fit(self, resume: Optional[str] = None, run_config: Any = None) -> dict[str, Any]:
        """Train to ``config.max_steps`` (resuming first when asked). Returns a summary dict with
        ``status`` "completed" or "interrupted" (a checkpoint was saved on SIGTERM/SIGINT; the
        summary's ``signal`` names it).

        ``run_config``: the recipe's resolved config (a dataclass), written as ``run_dir/config.yaml``
        once the resume checks have passed (a refused resume leaves the run's file as it was)."""
        cfg = self.config
        if resume:
            self.resume(resume)
        if run_config is not None:
            self.save_run_config(run_config)
        self._open_logs()
        status = "completed"
        with self._stop_on_signals(), self._progress() as bar:
            while self.step < cfg.max_steps:
                loss = self.train_step()
                bar.update(1)
                self._log_progress(loss, bar)
                if self._eval_due():
                    self.evaluate()
                stop, save = self._stop_or_save_due()
                if stop:
                    self.save_checkpoint()
                    status = "interrupted"
                    break
                if save:
                    self.save_checkpoint()
        if status == "completed" and self._saves_enabled() and not self._checkpointed(self.step):
            self.save_checkpoint()
        summary = {"status": status, "step": self.step, "tokens": self.tokens_seen,
                   "loss": self.losses[-1] if self.losses else None, "skipped_steps": self.bad_steps_total}
        if status == "interrupted":
            summary["signal"] = self.stop_signal
        return summary

    # ------------------------------------------------------------------ loop parts

    @contextmanager
    def _progress(self):
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if self._peak is None:
            self._peak = device_peak_flops(acc.device)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (acc.is_main_process and cfg.progress),
                   desc=f"train {cfg.run_name}", dynamic_ncols=True, unit="step")
        self._window = (time.perf_counter(), self.tokens_seen, [])
        self._last_save = time.monotonic()
        try:
            yield bar
        finally:
            bar.close()

    def _log_progress(self, loss: Optional[float], bar) -> None:
        """Every ``log_every`` steps: loss, lr, tokens/s and MFU to the bar and metrics.jsonl."""
        cfg, acc = self.config, self.accelerator
        started, tokens, losses = self._window
        if loss is not None:
            losses.append(loss)
        if self.step % cfg.log_every and self.step != cfg.max_steps:
            return
        elapsed = time.perf_counter() - started
        tps = (self.tokens_seen - tokens) / max(elapsed, 1e-9)
        record = {"step": self.step, "loss": sum(losses) / len(losses) if losses else float("nan"),
                  "lr": self.scheduler.get_last_lr()[0], "tokens": self.tokens_seen, "tokens_per_s": tps}
        if self._flops_per_token:
            record["mfu"] = mfu(tps, self._flops_per_token, self._peak, acc.num_processes)
        if self.grad_norm is not None:
            record["grad_norm"] = self.grad_norm
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tps:,.0f}",
                        mfu=f"{record.get('mfu', 0):.1%}")
        self._write_metrics(record)
        self._window = (time.perf_counter(), self.tokens_seen, [])

    def _eval_due(self) -> bool:
        cfg = self.config
        return (bool(cfg.eval_every) and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps
                and self.eval_dataset is not None)

    def _saves_enabled(self) -> bool:
        return bool(self.config.save_every_steps or self.config.save_every_minutes)

    def _stop_or_save_due(self) -> tuple[bool, bool]:
        """(a signal asked to stop on any rank, a periodic checkpoint is due): one collective."""
        cfg = self.config
        minutes = cfg.save_every_minutes
        time_due = bool(minutes) and (time.monotonic() - self._last_save) >= 60 * minutes
        stop, time_due = self._flags(self.stop_signal is not None, time_due)
        if stop and self.stop_signal is None:
            self.stop_signal = "SIGTERM"  # delivered to another rank
        step_due = bool(cfg.save_every_steps) and self.step % cfg.save_every_steps == 0
        save = (step_due or time_due) and self.step < cfg.max_steps
        if save:
            self._last_save = time.monotonic()
        return stop, save

    def _checkpointed(self, step: int) -> bool:
        return ckpt.why_incomplete(self.checkpoints_dir / ckpt.step_dir_name(step), check_hashes=False) is None

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, dataset: Optional[Dataset] = None, max_batches: Optional[int] = None) -> dict[str, float]:
        """Token-weighted mean loss (and perplexity) over up to ``eval_steps`` batches per rank."""
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise UsageError("no evaluation dataset was given")
        acc, model = self.accelerator, self.model
        max_batches = max_batches or self.config.eval_steps
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)
        iterator = iter(self._loader(dataset, train=False))
        for _ in range(max_batches):
            batch = next(iterator, None)
            (any_empty,) = self._flags(batch is None)
            if any_empty:
                break
            batch = self._to_device(batch)
            with self._loss_context():
                loss = self.compute_loss(batch).double()
            labels = batch.get("shift_labels", batch.get("labels"))
            n = (labels != -100).sum() if labels is not None else torch.tensor(batch["input_ids"].numel())
            total += torch.stack([loss * n, n.double()]).to(total.device)
        if acc.num_processes > 1:
            total = acc.reduce(total, reduction="sum")
        model.train(was_training)
        if total[1] == 0:
            raise UsageError("the evaluation dataset yields no batch; use more data or a smaller train.micro_batch_size")
        eval_loss = float(total[0] / total[1])
        result = {"step": self.step, "eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0))}
        self.eval_history.append(result)
        self._write_metrics(result)
        self._log(f"step {self.step}: eval loss {eval_loss:.4f}, perplexity {result['eval_ppl']:.2f}")
        return result

    # ------------------------------------------------------------------ logging

    def _open_logs(self) -> None:
        if not self.accelerator.is_main_process:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.tensorboard and self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self._writer = None

    def _write_metrics(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        file = self.run_dir / "metrics.jsonl"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(file, "a") as f:
                end = f.tell()
                try:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                except OSError:
                    f.truncate(end)  # no half line
                    raise
        except OSError as exc:
            raise_if_disk_full(exc, file)
            raise
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])

    # ------------------------------------------------------------------ checkpoints

    def _data_state(self) -> dict:
        """This rank's data position: micro-batches into the epoch (with the batch geometry that
        lets another world size continue it), a streamed dataset's own state, a collator's RNG."""
        ds = self.train_dataset
        state: dict[str, Any] = {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                                 "micro_batch_size": self.config.micro_batch_size,
                                 "world_size": self.data_world}
        if isinstance(ds, IterableDataset) and hasattr(ds, "state_dict"):
            state["dataset"] = ds.state_dict()
        if hasattr(self.collate_fn, "state_dict"):  # e.g. an MLM collator's masking RNG
            state["collator"] = self.collate_fn.state_dict()
        return state

    def _load_data_state(self, data: dict, path: Path) -> None:
        """Continue the epoch where the checkpoint stopped, at this run's world size: the samples
        all ranks consumed so far are dealt again to no one, whatever the number of processes."""
        world, micro = self.data_world, self.config.micro_batch_size
        saved_world = int(data.get("world_size", world))
        saved_micro = int(data.get("micro_batch_size", micro))
        self.epoch = int(data["epoch"])
        consumed = int(data["batches_in_epoch"]) * saved_micro * saved_world  # samples, all ranks
        self.batches_in_epoch = translate_position(consumed, micro, world, f"checkpoint {path}")
        if "collator" in data and hasattr(self.collate_fn, "load_state_dict"):
            self.collate_fn.load_state_dict(data["collator"])
        ds = self.train_dataset
        if "dataset" in data and hasattr(ds, "load_state_dict"):
            ds_state = dict(data["dataset"])
            if "position" in ds_state and ds_state.get("world_size", world) != world:
                samples = int(ds_state["position"]) * int(ds_state["world_size"])
                ds_state["position"] = translate_position(samples, 1, world, f"checkpoint {path}")
                ds_state["world_size"] = world
            ds.load_state_dict(ds_state)
        elif isinstance(ds, IterableDataset) and self.batches_in_epoch:
            if saved_world != world:
                raise UsageError(f"checkpoint {path} was saved by {saved_world} processes and its dataset keeps no "
                                 f"position of its own; resume it with {saved_world} processes")
            it = iter(self._loader(ds, train=True, epoch=self.epoch))  # no state: replay to the position
            for _ in range(self.batches_in_epoch):
                next(it)
            self._data_iter = it

    def save_checkpoint(self) -> Path:
        """Write a complete, verifiable checkpoint of the current step (every rank calls it)."""
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "bad_steps_total": self.bad_steps_total,
                 "global_batch_size": self.config.global_batch_size, "model": self.fingerprint,
                 "losses": self.losses}
        return self.checkpointer.save(self.step, state, self._data_state())

    def resume(self, resume: str) -> Optional[Path]:
        """Load ``resume``: a step folder, or "auto": the newest checkpoint of this run whose
        manifest verifies (walking back past damaged ones, saying why). None: nothing to resume."""
        path = self.checkpointer.find(resume)
        if path is None:
            return None
        state = ckpt.read_state(path)
        ckpt.check_fingerprint(state.get("model", {}), self.fingerprint, path)
        state, data = self.checkpointer.load(path, state)
        self._data_iter = None
        self._load_data_state(data, path)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.bad_steps_total = int(state.get("bad_steps_total", 0))
        self.losses = [float(x) for x in state.get("losses", [])]
        saved_world = state.get("world_size", self.accelerator.num_processes)
        resized = f" (saved by {saved_world} processes, now {self.accelerator.num_processes})" \
            if saved_world != self.accelerator.num_processes else ""
        self._log(f"resumed from {path} at step {self.step}{resized}")
        return path

    # ------------------------------------------------------------------ export

    def save_run_config(self, cfg: Any, filename: str = "config.yaml") -> Optional[Path]:
        """Write the recipe's resolved config (a dataclass) as ``run_dir/config.yaml``, atomically,
        on the main process only (the model card of the run reads it). Returns the path there."""
        if not self.accelerator.is_main_process:
            return None
        return save_config_yaml(cfg, self.run_dir / filename)

    def save_final(self, path: Optional[str | os.PathLike] = None) -> Path:
        """A consolidated ``save_pretrained`` folder (+ tokenizer), gathered from FSDP2 / ZeRO-3
        shards where needed; written under a temporary name, with a manifest, and renamed.
        Default ``run_dir/final``."""
        acc = self.accelerator
        final = Path(path) if path is not None else self.run_dir / "final"
        if self.parallel is not None:  # train.parallel: DTensor shards gathered to full tensors
            state_dict = self.parallel.full_state_dict(self.model)
        else:
            state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            ckpt.clean_stale(final.parent)
            with atomic_directory(final, overwrite=True, manifest=True) as tmp:
                model = acc.unwrap_model(self.model)
                model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(tmp)
        acc.wait_for_everyone()
        self._log(f"saved final model to {final}")
        return final
