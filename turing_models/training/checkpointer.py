"""Save, verify and resume training checkpoints: safetensors and JSON only, never a pickle.

What a checkpoint holds (layout in :mod:`.checkpoint`):

* the **full** model and optimizer state, keyed by parameter name, gathered from whatever engine
  ran: plain / DDP / FSDP2 through ``torch.distributed.checkpoint.state_dict`` (full state dicts,
  offloaded to the CPU of rank 0), DeepSpeed ZeRO-1/2/3 through ``deepspeed.utils``'
  ``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state`` (the fp32 master weights and
  Adam moments). Full states do not depend on the number of processes, so a run saved on N
  processes resumes on M, with either engine, and ``model.safetensors`` is already the consolidated
  model. The price is memory: rank 0 holds the whole model and optimizer state on its CPU while
  saving, and every rank reads it while resuming -- right for the models this project trains on
  one machine; a sharded layout is the way past that;
* the schedule's position (JSON), every rank's RNG states (torch / CUDA generator states as uint8
  tensors, Python and NumPy states as JSON) and data position (JSON);
* ``trainer_state.json`` and, written last, ``manifest.json`` with every file's size and sha256.

The folder is written under a temporary name by rank 0 (every rank writes its own small files into
it) and renamed when complete; ``--resume auto`` takes the newest folder whose manifest verifies.
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import UsageError
from ..io import (DiskFullError, load_safetensors, load_state, make_temp_directory, publish_directory,
                  save_safetensors, save_state, write_json_atomic)
from . import checkpoint as ckpt
from .engine import engine_kind

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


# ---------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch (and CUDA) generators as uint8 tensors, Python and NumPy
    states as plain values."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _persistent_buffers(module: torch.nn.Module):
    for prefix, mod in module.named_modules():
        for name, buf in mod._buffers.items():
            if buf is not None and name not in mod._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), buf


def _relink_deepspeed_moments(zero) -> None:
    """ZeRO-1/2 link each parameter's view of the Adam moments once, after the first step of the
    first parameter group, so the views of later groups stay empty; link them again."""
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


# ---------------------------------------------------------------------------- the checkpointer

class Checkpointer:
    """Writes and reads the checkpoints of one run for one prepared model / optimizer / schedule."""

    def __init__(self, accelerator, model, optimizer, scheduler, checkpoints_dir: Path, *,
                 keep_last: int = 2, log: Callable[[str], None] = logger.info):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.checkpoints_dir = Path(checkpoints_dir)
        self.keep_last = keep_last
        self.kind = engine_kind(accelerator)
        self.log = log

    # -------------------------------------------------------------- engine states

    def _module(self):
        return self.accelerator.unwrap_model(self.model)

    def _torch_optimizer(self):
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    def gather(self) -> tuple[dict, dict]:
        """The full model and optimizer states on the main process (empty dicts elsewhere).
        A collective: every rank calls it."""
        if self.kind == "deepspeed":
            return self._gather_deepspeed()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        options = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
        model_sd, optim_sd = get_state_dict(self._module(), self._torch_optimizer(), options=options)
        if not self.accelerator.is_main_process:
            return {}, {}
        return model_sd, optim_sd

    def _gather_deepspeed(self) -> tuple[dict, dict]:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        module = self._module()
        zero = self.optimizer.optimizer  # Accelerate's wrapper -> DeepSpeed's ZeRO optimizer
        base = zero.optimizer  # -> the torch optimizer of the flat fp32 partitions
        has_state = bool(base.state)
        if has_state:
            _relink_deepspeed_moments(zero)
        main = self.accelerator.is_main_process
        model_sd: dict = {}
        state: dict = {}
        for name, param in module.named_parameters():
            full = safe_get_full_fp32_param(param)
            if full is None:  # frozen parameter: no fp32 master
                continue
            if main:
                model_sd[name] = full.detach().cpu().clone()
            if has_state:
                moments = {k: safe_get_full_optimizer_state(param, k) for k in ADAM_KEYS}
                if main:
                    state[name] = {k: v.detach().cpu().clone() for k, v in moments.items()}
        if not main:
            return {}, {}
        for name, buf in _persistent_buffers(module):
            model_sd[name] = buf.detach().cpu().clone()
        steps = [st["step"] for st in base.state.values() if "step" in st]
        groups = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
        optim_sd = {"deepspeed": True, "state": state, "param_groups": groups,
                    "steps": [s.detach().cpu().clone() if torch.is_tensor(s) else s for s in steps]}
        return model_sd, (optim_sd if has_state else {"deepspeed": True, "param_groups": groups})

    def restore(self, model_sd: dict, optim_sd: dict) -> None:
        """Load full states into the prepared model and optimizer (every rank, any world size)."""
        if self.kind == "deepspeed":
            return self._restore_deepspeed(model_sd, optim_sd)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if optim_sd.get("deepspeed"):
            raise UsageError("this checkpoint was written by DeepSpeed ZeRO; resume it with a ZeRO engine "
                             "(train.distributed zero2/zero3), or consolidate its model.safetensors")
        module = self._module()
        if not optim_sd.get("state"):
            optim_sd = {}
        try:
            set_state_dict(module, self._torch_optimizer(), model_state_dict=model_sd,
                           optim_state_dict=optim_sd, options=StateDictOptions(full_state_dict=True, strict=True))
        except (RuntimeError, KeyError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise UsageError(f"the checkpoint does not fit this model and optimizer ({detail}); "
                             "resume with the config it was trained with") from None

    def _restore_deepspeed(self, model_sd: dict, optim_sd: dict) -> None:
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        module = self._module()
        zero = self.optimizer.optimizer
        base = zero.optimizer
        params = dict(module.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in model_sd]
        if missing:
            raise UsageError(f"the checkpoint lacks {len(missing)} parameters of this model, e.g. {missing[:3]}; "
                             "resume with the config it was trained with")
        state = optim_sd.get("state") or {}
        # written by DeepSpeed: one step count per flat group; by torch: one per parameter
        steps = list(optim_sd.get("steps") or [v["step"] for v in state.values() if "step" in v][:1])
        if state and not base.state:  # DeepSpeed creates the Adam moments lazily, at the first step
            step = steps[0] if steps else torch.tensor(0.0)
            flats = (getattr(zero, "fp32_partitioned_groups_flat", None)  # ZeRO-3
                     or getattr(zero, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
                     or [p for g in base.param_groups for p in g["params"]])
            for p in flats:
                base.state[p] = {"step": step.clone().to(p.device) if torch.is_tensor(step) else step,
                                 "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            _relink_deepspeed_moments(zero)
        elif state:
            for p_state in base.state.values():
                if steps and "step" in p_state:
                    s = steps[0]
                    p_state["step"] = s.clone().to(p_state["step"].device) if torch.is_tensor(p_state["step"]) else s
        for group, saved in zip(base.param_groups, optim_sd.get("param_groups") or []):
            for key, value in saved.items():
                if key in group and key != "params":
                    group[key] = tuple(value) if isinstance(group[key], tuple) else value
        for name, param in params.items():
            if name not in model_sd or not param.requires_grad:
                continue
            value = model_sd[name].float()
            safe_set_full_fp32_param(param, value)
            if name in state:
                for key in ADAM_KEYS:
                    safe_set_full_optimizer_state(param, state[name][key].float(), key)
        # the low-precision (working) copies of the weights
        trainable = [p for n, p in params.items() if n in model_sd]
        if any(hasattr(p, "ds_id") for p in trainable):
            with deepspeed.zero.GatheredParameters(trainable, modifier_rank=0):
                with torch.no_grad():
                    for name, p in params.items():
                        if name in model_sd:
                            p.data.copy_(model_sd[name].to(p.dtype).reshape(p.shape))
        else:
            with torch.no_grad():
                for name, p in params.items():
                    if name in model_sd:
                        p.data.copy_(model_sd[name].to(p.dtype))
        with torch.no_grad():
            for name, buf in _persistent_buffers(module):
                if name in model_sd:
                    buf.copy_(model_sd[name])

    # -------------------------------------------------------------- writing

    def _make_temp(self, final: Path) -> Optional[Path]:
        """Rank 0 clears stale temporaries and makes the temporary folder (None elsewhere)."""
        if not self.accelerator.is_main_process:
            return None
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        for path in ckpt.clean_stale(self.checkpoints_dir):
            self.log(f"removed {path}, left by an interrupted write")
        return make_temp_directory(final, overwrite=True)

    def _share_name(self, tmp: Optional[Path], final: Path) -> Path:
        """Every rank learns the name of rank 0's temporary folder (bytes summed across ranks)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return tmp
        name = torch.zeros(256, dtype=torch.int64, device=acc.device)
        if tmp is not None:
            raw = tmp.name.encode()
            name[:len(raw)] = torch.tensor(list(raw), dtype=torch.int64)
        name = acc.reduce(name, reduction="sum")
        text = bytes(int(x) for x in name.cpu().tolist()).rstrip(b"\0").decode()
        return final.parent / text

    def save(self, step: int, trainer_state: dict, data_state: dict) -> Path:
        """Write the checkpoint of ``step`` (a collective: every rank calls it). A failure on any
        rank (a full disk) fails the save on every rank, with the temporary folder removed."""
        acc = self.accelerator
        final = self.checkpoints_dir / ckpt.step_dir_name(step)
        tmp = self._share_name(self._agree(lambda: self._make_temp(final), final), final)
        model_sd, optim_sd = self.gather()
        rank = acc.process_index

        def write_files():
            save_state(tmp, f"rng_{rank}", rng_state())
            save_state(tmp, f"data_{rank}", data_state)
            if acc.is_main_process:
                save_safetensors(model_sd, tmp / MODEL_FILE, metadata={"format": "pt"})
                save_state(tmp, "optimizer", optim_sd)
                save_state(tmp, "scheduler", self.scheduler.state_dict())

        def publish():
            if acc.is_main_process:
                write_json_atomic(tmp / ckpt.STATE_FILE, {**trainer_state, "world_size": acc.num_processes,
                                                          "engine": self.kind}, sort_keys=True)
                publish_directory(tmp, final, manifest=True)
                ckpt.prune(self.checkpoints_dir, self.keep_last)

        self._agree(write_files, final, tmp)
        del model_sd, optim_sd
        self._agree(publish, final, tmp)
        self.log(f"saved checkpoint {final}")
        return final

    def _agree(self, write: Callable[[], Any], final: Path, tmp: Optional[Path] = None) -> Any:
        """Run ``write`` on every rank, then agree (one collective, also a barrier) on whether all of
        them succeeded; if not, every rank raises (a full disk on any rank: :class:`DiskFullError`)
        and the temporary folder is removed."""
        acc = self.accelerator
        error: Optional[BaseException] = None
        result = None
        try:
            result = write()
        except Exception as exc:  # noqa: BLE001 -- re-raised below, after the other ranks know
            error = exc
        failed, full = error is not None, isinstance(error, DiskFullError)
        if acc.num_processes > 1:
            flags = torch.tensor([int(failed), int(full)], dtype=torch.int64, device=acc.device)
            failed, full = (bool(x > 0) for x in acc.reduce(flags, reduction="sum").tolist())
        if not failed:
            return result
        if acc.is_main_process:
            folder = tmp if tmp is not None else result
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        if full and (error is None or isinstance(error, DiskFullError)):
            raise DiskFullError.writing(f"checkpoint {final}", getattr(error, "errno", None) or errno.ENOSPC) from None
        if error is not None:
            raise error
        raise RuntimeError(f"another process failed while writing checkpoint {final}; see its error")

    # -------------------------------------------------------------- reading

    def find(self, resume: str) -> Optional[Path]:
        """The checkpoint ``resume`` names: ``"auto"`` walks back from the newest to the newest that
        verifies (None: nothing to resume); a path must verify itself."""
        if self.accelerator.is_main_process and self.checkpoints_dir.is_dir():
            for path in ckpt.clean_stale(self.checkpoints_dir):
                self.log(f"removed {path}, left by an interrupted write")
            if self.checkpoints_dir.parent.is_dir():
                for path in ckpt.clean_stale(self.checkpoints_dir.parent):
                    self.log(f"removed {path}, left by an interrupted write")
        if resume != "auto":
            return Path(resume)
        path, skipped = ckpt.newest_verified(self.checkpoints_dir)
        for bad, reason in skipped:
            self.log(f"skipping checkpoint {bad}: {reason}")
            logger.warning("ignoring partial checkpoint %s: %s", bad, reason)
        if path is None:
            self.log(f"no complete checkpoint in {self.checkpoints_dir}: starting from scratch")
        elif skipped:
            self.log(f"resuming from {path.name}, the newest checkpoint that verifies")
        return path

    def load(self, path: Path, state: Optional[dict] = None) -> tuple[dict, dict]:
        """Restore model, optimizer, schedule and this rank's RNG states from ``path``; returns
        ``(trainer_state, data_state)``. ``path`` must verify (:func:`checkpoint.read_state`
        checks it, unless its result is passed as ``state``)."""
        acc = self.accelerator
        state = ckpt.read_state(path) if state is None else state
        model_sd = load_safetensors(path / MODEL_FILE)
        optim_sd = load_state(path, "optimizer")
        self.restore(model_sd, optim_sd)
        del model_sd, optim_sd
        self.scheduler.load_state_dict(load_state(path, "scheduler"))
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr
        rank = acc.process_index
        own = (path / f"rng_{rank}.json").is_file()
        set_rng_state(load_state(path, f"rng_{rank if own else 0}"))
        data_rank = rank if (path / f"data_{rank}.json").is_file() else 0
        data_state = load_state(path, f"data_{data_rank}")
        return state, data_state


def translate_position(samples: int, micro_batch_size: int, world_size: int, what: str) -> int:
    """Micro-batches per rank that cover ``samples`` samples of the epoch at a new world size."""
    per = micro_batch_size * world_size
    if samples % per:
        raise UsageError(f"the checkpoint stopped {samples} samples into the epoch, which {world_size} processes "
                         f"x micro-batch {micro_batch_size} cannot continue exactly ({what}); resume with the "
                         "world size it was saved with or from another checkpoint")
    return samples // per


__all__ = ["Checkpointer", "rng_state", "set_rng_state", "translate_position"]
