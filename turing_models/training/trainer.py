"""The shared Trainer (DESIGN.md principle 5).

Pretraining and fine-tuning differ only in the model, the data and the loss the task supplies;
the Trainer owns everything else, on top of :class:`accelerate.Accelerator`:

* precision (bf16 on a GPU, fp32 on CPU), gradient accumulation, clipping, AdamW + schedule;
* the distributed engine: DDP, FSDP2, DeepSpeed ZeRO-2/3 (+ offload), picked by
  ``TrainerConfig.distributed`` under torchrun or by ``accelerate launch --config_file``;
* activation checkpointing and ``torch.compile``, applied from outside the model;
* logging: a tqdm bar (loss, lr, tokens/s, MFU, ETA), ``metrics.jsonl``, TensorBoard if installed;
* evaluation, checkpoint / resume (bitwise on CPU), SIGTERM/SIGINT handling, NaN/inf skipping,
  and the final consolidated ``save_pretrained`` export.

Datasets: a map-style dataset is shuffled and sharded across ranks by the trainer; an
``IterableDataset`` (e.g. :class:`turing_models.data.PackedDataset`) shards itself, and its
``state_dict()`` / ``load_state_dict()`` carry the data position through checkpoints.
A batch is a dict passed to ``model(**batch)``; ``loss_fn(model, batch) -> loss`` replaces
``model(**batch).loss`` when given.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import UsageError
from . import checkpoint as ckpt
from .config import TrainerConfig, save_config_yaml
from .flops import device_peak_flops, model_flops_per_token
from .optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

DISTRIBUTED_DIR = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "distributed"


class TrainingStopped(RuntimeError):
    """Too many non-finite losses in a row."""


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def build_accelerator(config: TrainerConfig, accumulation: int):
    """An Accelerator for ``config``: the engine named by ``config.distributed`` (under torchrun),
    else whatever ``accelerate launch`` configured through its environment."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    precision = config.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    kwargs: dict[str, Any] = dict(mixed_precision=mixed, gradient_accumulation_steps=accumulation,
                                  step_scheduler_with_optimizer=False)
    engine = config.distributed
    if engine == "fsdp2":
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False,
        )
    elif engine.startswith("zero"):
        path = DISTRIBUTED_DIR / f"ds_{engine}.json"
        ds_config = json.loads(path.read_text())
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds_config)
    if not torch.cuda.is_available() and not engine.startswith("zero"):
        kwargs["cpu"] = True  # DeepSpeed runs on its CPU accelerator only when cpu is not forced
    accelerator = Accelerator(**kwargs)
    if (accelerator.distributed_type == DistributedType.DEEPSPEED and not torch.cuda.is_available()
            and torch.distributed.is_initialized()):
        # DeepSpeed's CPU accelerator (the CPU test-suite): Accelerate initialises the process group
        # through DeepSpeed but, with no device backend, records a single process; fix the ranks.
        from accelerate import PartialState

        for state in (PartialState(), accelerator.state):
            state.num_processes = torch.distributed.get_world_size()
            state.process_index = torch.distributed.get_rank()
            state.local_process_index = int(os.environ.get("LOCAL_RANK", "0"))
            state.backend = torch.distributed.get_backend()
    if engine == "fsdp2" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # Accelerate turns FSDP on for accelerator devices only; FSDP2 (fully_shard) itself runs on
        # CPU with gloo, which the CPU test-suite uses, so switch it on here.
        from accelerate import PartialState

        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = kwargs["fsdp_plugin"]
    return accelerator


def _fill_deepspeed_config(accelerator, config: TrainerConfig, accumulation: int) -> None:
    """Write this run's batch and clipping numbers into the DeepSpeed config (no "auto" left)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = config.global_batch_size
    ds["gradient_clipping"] = config.grad_clip
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds["steps_per_print"] = 1 << 30


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
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accumulation = config.validate(world)
        set_seed(config.seed)
        self.accelerator = build_accelerator(config, self.accumulation)
        acc = self.accelerator
        if acc.num_processes != world:  # launched by a tool that does not set WORLD_SIZE
            self.accumulation = config.validate(acc.num_processes)
            acc.gradient_accumulation_steps = self.accumulation
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        _fill_deepspeed_config(acc, config, self.accumulation)

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
        optimizer = build_optimizer(model, config)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = build_scheduler(self._base_optimizer(), config)
        acc.register_for_checkpointing(self.scheduler)
        if config.compile:
            self.model = torch.compile(self.model)

        self.step = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.losses: list[float] = []
        self.eval_history: list[dict] = []
        self._stop_requested = False
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

        acc = self.accelerator
        if train:
            sampler = DistributedSampler(dataset, num_replicas=acc.num_processes, rank=acc.process_index,
                                         shuffle=True, seed=self.config.seed, drop_last=True)
            sampler.set_epoch(epoch)
            indices = list(sampler)[skip_batches * micro:]
        else:
            indices = list(range(acc.process_index, len(dataset), acc.num_processes))
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
        return loss

    # ------------------------------------------------------------------ training

    def _install_signal_handlers(self):
        previous = {}

        def handler(signum, frame):
            if self._stop_requested:  # second signal: stop now
                signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
                raise KeyboardInterrupt
            self._stop_requested = True
            self._log(f"received {signal.Signals(signum).name}: saving a checkpoint at the end of this step")

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

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
            self.tokens_seen += n_tokens * acc.num_processes
            with acc.accumulate(model):
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
            norm = acc.clip_grad_norm_(model.parameters(), self.config.grad_clip)
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
        ``status`` "completed" or "interrupted" (a checkpoint was saved on SIGTERM/SIGINT).

        ``run_config``: the recipe's resolved config (a dataclass), written as ``run_dir/config.yaml``
        once the resume checks have passed (a refused resume leaves the run's file as it was)."""
        cfg, acc = self.config, self.accelerator
        if resume:
            self.resume(resume)
        if run_config is not None:
            self.save_run_config(run_config)
        if self._peak is None:
            self._peak = device_peak_flops(acc.device)
        self._open_logs()
        previous_handlers = self._install_signal_handlers()
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (acc.is_main_process and cfg.progress),
                   desc=f"train {cfg.run_name}", dynamic_ncols=True, unit="step")
        status = "completed"
        window_start, window_tokens, window_losses = time.perf_counter(), self.tokens_seen, []
        last_save = time.monotonic()
        try:
            while self.step < cfg.max_steps:
                loss = self.train_step()
                if loss is not None:
                    window_losses.append(loss)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    tps = (self.tokens_seen - window_tokens) / max(elapsed, 1e-9)
                    record = {
                        "step": self.step,
                        "loss": sum(window_losses) / len(window_losses) if window_losses else float("nan"),
                        "lr": self.scheduler.get_last_lr()[0],
                        "tokens": self.tokens_seen,
                        "tokens_per_s": tps,
                    }
                    if self._flops_per_token:
                        record["mfu"] = tps * self._flops_per_token / (self._peak * acc.num_processes)
                    if getattr(self, "grad_norm", None) is not None:
                        record["grad_norm"] = self.grad_norm
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{tps:,.0f}", mfu=f"{record.get('mfu', 0):.1%}")
                    self._write_metrics(record)
                    window_start, window_tokens, window_losses = time.perf_counter(), self.tokens_seen, []
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps \
                        and self.eval_dataset is not None:
                    self.evaluate()
                time_due = bool(cfg.save_every_minutes) and (time.monotonic() - last_save) >= 60 * cfg.save_every_minutes
                stop, time_due = self._flags(self._stop_requested, time_due)
                step_due = bool(cfg.save_every_steps) and self.step % cfg.save_every_steps == 0
                if stop:
                    self.save_checkpoint()
                    status = "interrupted"
                    break
                if (step_due or time_due) and self.step < cfg.max_steps:
                    self.save_checkpoint()
                    last_save = time.monotonic()
        finally:
            bar.close()
            for sig, old in previous_handlers.items():
                signal.signal(sig, old)
        summary = {"status": status, "step": self.step, "tokens": self.tokens_seen,
                   "loss": self.losses[-1] if self.losses else None, "skipped_steps": self.bad_steps_total}
        if status == "completed" and (cfg.save_every_steps or cfg.save_every_minutes):
            if not ckpt.is_complete(self.checkpoints_dir / ckpt.step_dir_name(self.step)):
                self.save_checkpoint()
        return summary

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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])

    # ------------------------------------------------------------------ checkpoints

    def _data_state(self) -> dict:
        ds = self.train_dataset
        state: dict[str, Any] = {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}
        if isinstance(ds, IterableDataset) and hasattr(ds, "state_dict"):
            state["dataset"] = ds.state_dict()
        if hasattr(self.collate_fn, "state_dict"):  # e.g. an MLM collator's masking RNG
            state["collator"] = self.collate_fn.state_dict()
        return state

    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint for the current step (temporary name, then rename)."""
        acc = self.accelerator
        final = self.checkpoints_dir / ckpt.step_dir_name(self.step)
        tmp = self.checkpoints_dir / f".tmp-{final.name}"
        if acc.is_main_process:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clear_partial(self.checkpoints_dir)
            if final.exists():
                ckpt.remove_tree(final)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        torch.save(self._data_state(), tmp / f"data_state_{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "bad_steps_total": self.bad_steps_total,
                "world_size": acc.num_processes,
                "global_batch_size": self.config.global_batch_size,
                "model": self.fingerprint,
                "losses": self.losses,
            }
            ckpt.write_json_atomic(tmp / ckpt.STATE_FILE, state)
            ckpt.fsync_dir(tmp)
            os.replace(tmp, final)
            ckpt.fsync_dir(self.checkpoints_dir)
            ckpt.prune(self.checkpoints_dir, self.config.keep_last)
        acc.wait_for_everyone()
        self._log(f"saved checkpoint {final}")
        return final

    def resume(self, resume: str) -> Optional[Path]:
        """Load ``resume`` ("auto": the newest complete checkpoint of this run, if any)."""
        acc = self.accelerator
        if resume == "auto":
            path = ckpt.latest_checkpoint(self.checkpoints_dir)
            if path is None:
                self._log(f"no checkpoint in {self.checkpoints_dir}: starting from scratch")
                return None
        else:
            path = Path(resume)
        state = ckpt.read_state(path)
        ckpt.check_fingerprint(state.get("model", {}), self.fingerprint, path)
        if state.get("world_size", 1) != acc.num_processes and self.is_deepspeed:
            raise UsageError(f"checkpoint {path} was written by {state['world_size']} DeepSpeed processes; "
                             f"resume it with the same number (now {acc.num_processes})")
        acc.load_state(str(path))
        data_file = path / f"data_state_{acc.process_index}.pt"
        if data_file.is_file():
            data = torch.load(data_file, weights_only=False)
            self.epoch = data["epoch"]
            self.batches_in_epoch = data["batches_in_epoch"]
            if "collator" in data and hasattr(self.collate_fn, "load_state_dict"):
                self.collate_fn.load_state_dict(data["collator"])
            ds = self.train_dataset
            if "dataset" in data and hasattr(ds, "load_state_dict"):
                ds.load_state_dict(data["dataset"])
            elif isinstance(ds, IterableDataset) and self.batches_in_epoch:
                it = iter(self._loader(ds, train=True, epoch=self.epoch))  # no state: replay to the position
                for _ in range(self.batches_in_epoch):
                    next(it)
                self._data_iter = it
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.bad_steps_total = state.get("bad_steps_total", 0)
        self.losses = list(state.get("losses", []))
        self._log(f"resumed from {path} at step {self.step}")
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
        shards where needed; written under a temporary name and renamed. Default ``run_dir/final``."""
        acc = self.accelerator
        final = Path(path) if path is not None else self.run_dir / "final"
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
            if tmp.exists():
                ckpt.remove_tree(tmp)
            model = acc.unwrap_model(self.model)
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            ckpt.fsync_dir(tmp)
            if final.exists():
                ckpt.remove_tree(final)
            os.replace(tmp, final)
        acc.wait_for_everyone()
        self._log(f"saved final model to {final}")
        return final
