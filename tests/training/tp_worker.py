"""torchrun worker for the tensor-parallel tests (CPU, gloo). Writes ``<out>/result_<rank>.json``.

Modes:
  forward  --gpt2 DIR --bert DIR [--nlg DIR --nlu DIR]: TP over all ranks; logits of a converted
           GPT-2 and of a converted BERT (MLM) equal the unsharded model's, greedy generate() gives
           the same tokens, and each rank holds exactly its slice of every planned weight; with
           --nlg/--nlu, the autoload checks too.
  train    --gpt2 DIR --tp T --dp-shard S [--dp-replicate R]: 5 clipped AdamW steps on the (R x S x T) mesh
           against the same 5 steps in one process on the global batch; a sharded checkpoint at step
           3 resumed into a fresh model gives the same steps 4-5; the full-tensor export loads on one
           device with the reference logits.
  autoload --nlg DIR --nlu DIR: ``AutoModelForCausalLM.from_pretrained(DIR, tp_plan="auto")`` and the
           NLU equivalent shard on load and give the single-process logits.
  trainer  --data DIR --tp T --dp-shard S --micro M [--resume] [--sp] [--lp]: the Trainer with
           ``train.parallel`` (also runs without torchrun, as the one-process reference).
  sp       --gpt2 DIR: sequence parallelism, loss parallelism and both, over all ranks as TP, on the
           converted GPT-2 and on a model with a padded vocabulary: loss, every gradient, eval
           logits and greedy tokens against the unsharded model, and the local shapes that show
           the sharding (the norms see 1/tp of the sequence; the logits 1/tp of the vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import turing_models  # noqa: F401  (registers the Auto classes)
from turing_models.nlg import TuringNLGForCausalLM
from turing_models.nlu import TuringNLUForMaskedLM
from turing_models.training import parallel as par

STEPS, SAVE_AT, MICRO, SEQ = 5, 3, 2, 16
CLIP = 0.5  # below the gradient norms of these steps (about 2.5): every step is clipped


def local(t):
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def shard_report(model) -> dict:
    """Local and global shape of every parameter; sharded ones whose local tensor is full-size."""
    from torch.distributed.tensor import DTensor, Shard

    shapes, full_shapes, full_sized = {}, {}, []
    for name, p in model.named_parameters():
        shapes[name] = list(local(p.data).shape)
        full_shapes[name] = list(p.data.shape)
        sharded = isinstance(p.data, DTensor) and any(isinstance(pl, Shard) for pl in p.data.placements)
        if sharded and tuple(p.data.to_local().shape) == tuple(p.data.shape):
            full_sized.append(name)
    return {"shapes": shapes, "full_shapes": full_shapes, "full_sized_shards": full_sized}


def forward_mode(args, rank: int) -> dict:
    world = dist.get_world_size()
    mesh = par.build_device_mesh(par.ParallelDims(tp=world))
    out: dict = {}

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row

    nlg = TuringNLGForCausalLM.from_pretrained(args.gpt2, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = nlg(ids).logits
        ref_masked = nlg(ids, attention_mask=mask).logits
    ref_gen = nlg.generate(ids[:1, :6], max_new_tokens=6, do_sample=False)
    par.apply_tensor_parallel(nlg, mesh)
    with torch.no_grad():
        got = nlg(ids).logits
        got_masked = nlg(ids, attention_mask=mask).logits
    got_gen = nlg.generate(ids[:1, :6], max_new_tokens=6, do_sample=False)
    # the training path (grad enabled) goes through DTensor ops rather than the local inference path
    got_grad = nlg(ids).logits
    out["nlg_max_diff"] = float((got - ref).abs().max())
    out["nlg_masked_max_diff"] = float((got_masked - ref_masked).abs().max())
    out["nlg_grad_path_max_diff"] = float((got_grad.detach() - ref).abs().max())
    out["nlg_tokens_ref"] = ref_gen.tolist()
    out["nlg_tokens_tp"] = got_gen.tolist()
    out["nlg"] = shard_report(nlg)

    nlu = TuringNLUForMaskedLM.from_pretrained(args.bert, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = nlu(ids, attention_mask=mask.flip(1)).logits
    par.apply_tensor_parallel(nlu, mesh)
    with torch.no_grad():
        got = nlu(ids, attention_mask=mask.flip(1)).logits
    out["nlu_max_diff"] = float((got - ref).abs().max())
    # with gradients: the unpadded (varlen) training path through DTensor ops
    out["nlu_grad_path_max_diff"] = float((nlu(ids, attention_mask=mask.flip(1)).logits.detach() - ref).abs().max())
    out["nlu"] = shard_report(nlu)
    if args.nlg and args.nlu:
        out.update({f"auto_{k}": v for k, v in autoload_mode(args, rank).items()})
    return out


def full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def sp_mode(args, rank: int) -> dict:
    from turing_models.nlg import TuringNLGConfig

    world = dist.get_world_size()
    mesh = par.build_device_mesh(par.ParallelDims(tp=world))
    padded = TuringNLGConfig(vocab_size=136, real_vocab_size=130, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=32, hidden_dropout=0.0,
                             attention_dropout=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    sources = {"gpt2": lambda: TuringNLGForCausalLM.from_pretrained(args.gpt2, attn_implementation="sdpa"),
               "padded": lambda: TuringNLGForCausalLM(padded)}
    state = {"padded": TuringNLGForCausalLM(padded).state_dict()}
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    out: dict = {}
    for name, build in sources.items():
        def fresh():
            model = build()
            if name in state:
                model.load_state_dict(state[name])
            model.config._attn_implementation = "sdpa"
            return model

        ref = fresh()
        ref_loss = ref(ids, labels=ids).loss
        ref_loss.backward()
        ref.eval()
        with torch.no_grad():
            ref_logits = ref(ids).logits
        ref_tokens = ref.generate(ids[:1, :6], max_new_tokens=6, do_sample=False).tolist()
        grads = {n: p.grad for n, p in ref.named_parameters()}
        for sp, lp in ((True, False), (False, True), (True, True)):
            model = fresh()
            par.apply_tensor_parallel(model, mesh, sequence_parallel=sp, loss_parallel=lp)
            seen = {}
            norm = model.model.layers[1].post_attention_layernorm
            def record(module, inputs):  # what the norm receives: this rank's tokens of the stream
                seen.setdefault("norm_local", list(local(inputs[0]).shape))

            hook = norm.register_forward_pre_hook(record)
            with par.loss_parallel_context(model):
                result = model(ids, labels=ids)
                result.loss.backward()
            hook.remove()
            seen["logits_local"] = list(local(result.logits.detach()).shape)
            grad_diff = max(float((full(p.grad) - grads[n]).abs().max()) for n, p in model.named_parameters())
            model.eval()
            with torch.no_grad():
                logits = full(model(ids).logits)[..., :ref_logits.shape[-1]]
            key = f"{name}_{'sp' if sp else ''}{'lp' if lp else ''}"
            out[key] = {"loss": float(full(result.loss)), "ref_loss": float(ref_loss), "grad_max_diff": grad_diff,
                        "logits_max_diff": float((logits - ref_logits).abs().max()), **seen,
                        "seq": ids.shape[1], "vocab": model.config.vocab_size}
            if not lp:  # generation returns to the gathered head
                out[key]["tokens_equal"] = model.generate(ids[:1, :6], max_new_tokens=6,
                                                          do_sample=False).tolist() == ref_tokens
    return out


def batches(vocab: int, n: int, rows: int):
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, vocab, (rows, SEQ), generator=g) for _ in range(n)]


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)


def train_mode(args, rank: int) -> dict:
    dims = par.ParallelDims(tp=args.tp, dp_shard=args.dp_shard, dp_replicate=args.dp_replicate)
    mesh = par.build_device_mesh(dims)
    dp_rank, dp_size = par.data_parallel_rank(mesh)
    out: dict = {"dp_rank": dp_rank, "dp_size": dp_size}

    def load():
        return TuringNLGForCausalLM.from_pretrained(args.gpt2, attn_implementation="sdpa")

    vocab = load().config.vocab_size
    data = batches(vocab, STEPS, MICRO * dp_size)

    # the single-process reference: the global batch in one process
    ref = load()
    ref_opt = make_optimizer(ref)
    ref_losses = []
    for ids in data:
        loss = ref(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
        ref_opt.step()
        ref_opt.zero_grad()
        ref_losses.append(float(loss))
    out["ref_losses"] = ref_losses

    def step(model, opt, ids):
        mine = ids[dp_rank * MICRO:(dp_rank + 1) * MICRO]  # the data-parallel rank picks the rows
        loss = model(mine, labels=mine).loss
        loss.backward()
        par.clip_grad_norm_(model.parameters(), CLIP)  # parameters on two meshes: (dp_shard, tp) and dp_shard
        opt.step()
        opt.zero_grad()
        value = loss.detach().clone()
        dist.all_reduce(value)  # every rank's loss: the mean over dp ranks (tp ranks agree)
        return float(value) / dist.get_world_size()

    model, _ = par.parallelize(load(), dims, mesh)
    opt = make_optimizer(model)
    out["shards"] = shard_report(model)
    losses = []
    ckpt = Path(args.out) / "ckpt"
    for i, ids in enumerate(data):
        losses.append(step(model, opt, ids))
        if i + 1 == SAVE_AT:
            par.save_sharded_checkpoint(ckpt, model, opt)
    out["losses"] = losses

    resumed, _ = par.parallelize(load(), dims, mesh)
    resumed_opt = make_optimizer(resumed)
    par.load_sharded_checkpoint(ckpt, resumed, resumed_opt)
    out["resumed_losses"] = [step(resumed, resumed_opt, ids) for ids in data[SAVE_AT:]]
    out["checkpoint_files"] = sorted(p.name for p in (ckpt / par.SHARDED_DIR).iterdir()) if rank == 0 else []

    export = Path(args.out) / "export"
    par.save_pretrained_full(model, export)
    if rank == 0:
        single = TuringNLGForCausalLM.from_pretrained(export, attn_implementation="sdpa").eval()
        ref.eval()
        with torch.no_grad():
            probe = data[0][:2]
            out["export_max_diff"] = float((single(probe).logits - ref(probe).logits).abs().max())
    return out


def autoload_mode(args, rank: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    out: dict = {}
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    for key, auto, folder in (("nlg", AutoModelForCausalLM, args.nlg), ("nlu", AutoModelForMaskedLM, args.nlu)):
        single = auto.from_pretrained(folder, attn_implementation="sdpa").eval()
        sharded = auto.from_pretrained(folder, tp_plan="auto", attn_implementation="sdpa").eval()
        with torch.no_grad():
            out[f"{key}_max_diff"] = float((sharded(ids).logits - single(ids).logits).abs().max())
        out[key] = shard_report(sharded)
        out[f"{key}_class"] = type(sharded).__name__
    return out


def trainer_mode(args, rank: int) -> dict:
    """The real Trainer with ``train.parallel``: 4 steps on a PackedDataset, a checkpoint every 2,
    the export; with --resume, a fresh Trainer resumes the step-2 checkpoint and runs steps 3-4."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _tiny import SEQ, tiny_model

    from turing_models.data import PackedDataset
    from turing_models.training import Trainer, TrainerConfig
    from turing_models.training.config import ParallelConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))

    def run(out: str, resume=None):
        cfg = TrainerConfig(run_name="run", output_dir=out, max_steps=4, global_batch_size=4,
                            micro_batch_size=args.micro, lr=3e-3, warmup_steps=1, log_every=1, progress=False,
                            tensorboard=False, save_every_steps=2, keep_last=5, grad_clip=0.5,
                            activation_checkpointing=args.tp > 1,  # recomputation must not change the losses
                            parallel=ParallelConfig(tp=args.tp, dp_shard=args.dp_shard, sequence_parallel=args.sp,
                                                    loss_parallel=args.lp))
        data_rank, data_world = par.data_parallel_rank_for(cfg.parallel, rank, world)
        ds = PackedDataset(args.data, "train", seq_len=SEQ, seed=0, shuffle=True, rank=data_rank,
                           world_size=data_world)
        model = tiny_model(num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
        trainer = Trainer(model, ds, config=cfg)
        summary = trainer.fit(resume=resume)
        return trainer, summary

    trainer, summary = run(args.out)
    final = str(trainer.save_final())
    out = {"losses": trainer.losses, "final": final, "step": summary["step"], "tokens": summary["tokens"],
           "data": [trainer.data_rank, trainer.data_world], "grad_norm": trainer.grad_norm,
           "parallel": trainer.parallel is not None,
           # the styles that only the sequence- / loss-parallel plans install
           "sp_applied": bool(getattr(trainer.model.model.norm_f, "_is_hooked", False)),
           "lp_applied": bool(getattr(trainer.model.lm_head, "masks_padding", False))}
    if args.resume:
        step2 = Path(args.out) / "run" / "checkpoints"
        resumed, _ = run(str(Path(args.out) / "resumed"), resume=str(sorted(step2.glob("step-*"))[0]))
        out["resumed_losses"] = resumed.losses
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["forward", "train", "autoload", "trainer", "sp"])
    ap.add_argument("--sp", action="store_true", help="train.parallel.sequence_parallel")
    ap.add_argument("--lp", action="store_true", help="train.parallel.loss_parallel")
    ap.add_argument("--data")
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpt2")
    ap.add_argument("--bert")
    ap.add_argument("--nlg")
    ap.add_argument("--nlu")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dp-shard", type=int, default=1)
    ap.add_argument("--dp-replicate", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mode in ("forward", "train", "sp"):  # autoload: transformers starts the group; trainer: Accelerate
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    fn = {"forward": forward_mode, "train": train_mode, "autoload": autoload_mode, "trainer": trainer_mode,
          "sp": sp_mode}[args.mode]
    result = fn(args, rank)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"result_{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
