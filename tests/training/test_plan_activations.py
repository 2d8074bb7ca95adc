"""The planner's activation term against what autograd really saves.

Every tensor autograd saves for backward goes through ``saved_tensors_hooks``' pack hook; the test
counts the unique storages (parameters excluded) of one forward pass on the CPU. Under activation
checkpointing the blocks save nothing through the outer hook: what they keep is their inputs
(recorded with forward pre-hooks), plus one block's tensors while it is recomputed in backward,
which is the largest per-block figure of the same model measured without checkpointing.
"""

from collections import defaultdict

import pytest
import torch

from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
from turing_models.training.plan import ModelShape, activation_breakdown


def saved_bytes(model, ids: torch.Tensor, checkpointing: bool) -> dict:
    """Unique storages autograd keeps for one forward pass: total bytes, and the largest block."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    per_block: dict = defaultdict(int)
    current = [None]

    def record(t: torch.Tensor, where) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in storages:
            storages[ptr] = storage.nbytes()
            per_block[where] += storage.nbytes()

    def pack(t):
        record(t, current[0])
        return t

    handles = []
    for i, block in enumerate(model.model.layers):
        def pre(module, args, i=i):
            if checkpointing:  # the checkpoint keeps the block's inputs for the recomputation
                for a in args:
                    if torch.is_tensor(a):
                        record(a, "inputs")
            current[0] = i

        def post(module, args, out):
            current[0] = None

        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert out.loss.requires_grad
    blocks = [v for k, v in per_block.items() if isinstance(k, int)]
    return {"total": sum(storages.values()), "block_max": max(blocks, default=0)}


def build(scale: str, attn: str, dtype: torch.dtype, **overrides):
    config = TuringNLGConfig.from_name(scale, attention_dropout=0.0, attn_implementation=attn, **overrides)
    torch.manual_seed(0)
    return TuringNLGForCausalLM(config).to(dtype).train()


CASES = [
    # scale, layers, hidden dropout, dtype, micro-batch, two sequence lengths
    ("tiny", None, 0.0, torch.float32, 2, (32, 128)),
    ("tiny", None, 0.1, torch.bfloat16, 2, (32, 128)),
    ("125m", 2, 0.1, torch.float32, 1, (64, 256)),  # the 125m block shape, 2 of its 12 layers
]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("scale,layers,dropout,dtype,batch,seq_lens", CASES)
def test_planner_activations_match_saved_tensors(scale, layers, dropout, dtype, batch, seq_lens, attn):
    overrides = {"hidden_dropout": dropout}
    if layers:
        overrides["num_hidden_layers"] = layers
    model = build(scale, attn, dtype, **overrides)
    d = torch.finfo(dtype).bits // 8
    lines = []
    for seq_len in seq_lens:
        ids = torch.randint(0, model.config.real_vocab_size, (batch, seq_len))
        plain = saved_bytes(model, ids, checkpointing=False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            kept = saved_bytes(model, ids, checkpointing=True)
        finally:
            model.gradient_checkpointing_disable()
        measured = {False: plain["total"], True: kept["total"] + plain["block_max"]}
        shape = ModelShape.from_model(model, seq_len)
        for ckpt in (False, True):
            # on the CPU a dropout mask has the activations' dtype (CUDA: one byte)
            planned = activation_breakdown(shape, batch, ckpt, bytes_per=d, mask_bytes=d)["saved"]
            lines.append(f"{scale:>5} {attn:>5} {str(dtype)[6:]:>8} T={seq_len:<4} ckpt={ckpt!s:<5} "
                         f"measured {measured[ckpt] / 2**20:9.2f} MiB  planned {planned / 2**20:9.2f} MiB  "
                         f"({planned / measured[ckpt] - 1:+.1%})")
            assert planned == pytest.approx(measured[ckpt], rel=0.10), lines[-1]
    print("\n" + "\n".join(lines))


def test_checkpointing_keeps_two_tensors_per_block():
    """The residual form hands each block two tensors (branch output and stream): both are kept."""
    model = build("tiny", "sdpa", torch.float32, hidden_dropout=0.0, num_hidden_layers=6)
    ids = torch.randint(0, 1000, (1, 128))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kept6 = saved_bytes(model, ids, checkpointing=True)["total"]
    model = build("tiny", "sdpa", torch.float32, hidden_dropout=0.0, num_hidden_layers=3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kept3 = saved_bytes(model, ids, checkpointing=True)["total"]
    per_block = (kept6 - kept3) / 3
    assert per_block == 2 * 4 * 128 * model.config.hidden_size
