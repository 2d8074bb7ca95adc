"""Trainer behaviour on a tiny TuringNLG + PackedDataset (CPU, fp32)."""

import json
import logging
import math

import pytest
import torch

from turing_models.errors import UsageError
from turing_models.training import Trainer, TrainerConfig, TrainingStopped

from _tiny import SEQ, tiny_model, token_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_folder(tmp_path_factory.mktemp("tokens") / "tok")


def make_trainer(data, out, steps=6, seed=0, model=None, **kw):
    from turing_models.data import PackedDataset

    train = PackedDataset(data, "train", seq_len=SEQ, seed=0)
    val = PackedDataset(data, "val", seq_len=SEQ, shuffle=False)
    cfg = TrainerConfig(run_name="run", output_dir=str(out), max_steps=steps, global_batch_size=4,
                        micro_batch_size=2, lr=3e-3, warmup_steps=2, log_every=2, eval_steps=2,
                        progress=False, tensorboard=False, **kw)
    return Trainer(model or tiny_model(seed), train, val, config=cfg)


def test_resume_is_bitwise_identical(data, tmp_path):
    """N steps straight == k steps, stop, resume to N (dropout on, accumulation 2)."""
    straight = make_trainer(data, tmp_path / "a", steps=6)
    straight.fit()
    partial = make_trainer(data, tmp_path / "b", steps=6)  # same schedule; stopped after step 3
    for _ in range(3):
        partial.train_step()
    partial.save_checkpoint()
    resumed = make_trainer(data, tmp_path / "b", steps=6, seed=123)  # other init: weights come from the checkpoint
    resumed.fit(resume="auto")
    assert resumed.losses == straight.losses  # bitwise
    assert len(straight.losses) == 6 and straight.losses[-1] < straight.losses[0]
    for p, q in zip(straight.unwrapped_model.parameters(), resumed.unwrapped_model.parameters()):
        assert torch.equal(p, q)


def test_metrics_eval_and_final_export(data, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(data, tmp_path, steps=4)
    trainer.fit()
    result = trainer.evaluate()
    assert math.isclose(result["eval_ppl"], math.exp(result["eval_loss"]))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in logged)
    assert logged[-1]["tokens"] == 4 * 4 * SEQ
    final = trainer.save_final()
    loaded = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.randint(1, 500, (1, 12))
    model = trainer.unwrapped_model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_keep_last_and_partial_checkpoints_ignored(data, tmp_path, caplog):
    trainer = make_trainer(data, tmp_path, steps=6, save_every_steps=1, keep_last=2)
    trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000005", "step-00000006"]
    # what a kill -9 in the middle of writing step 7 / 8 leaves behind
    (ckpts / ".tmp-step-00000007").mkdir()
    (ckpts / ".tmp-step-00000007" / "model.safetensors").write_bytes(b"partial")
    (ckpts / "step-00000008").mkdir()
    resumed = make_trainer(data, tmp_path, steps=7)
    with caplog.at_level(logging.WARNING):
        resumed.fit(resume="auto")
    assert "ignoring partial checkpoint" in caplog.text
    assert resumed.step == 7 and len(resumed.losses) == 7


def test_resume_from_another_model_is_refused(data, tmp_path):
    make_trainer(data, tmp_path, steps=2, save_every_steps=2).fit()
    other = make_trainer(data, tmp_path, steps=4, model=tiny_model(hidden_size=48))
    with pytest.raises(UsageError, match=r"belongs to another model: hidden_size=32 \(checkpoint\) vs 48"):
        other.fit(resume="auto")
    with pytest.raises(UsageError, match="does not exist"):
        other.fit(resume=str(tmp_path / "nowhere"))


def test_nonfinite_loss_skips_then_stops(data, tmp_path):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = model(**batch).loss
        return loss * float("nan") if calls["n"] > 4 else loss  # steps 1-2 fine, then NaN forever

    trainer = make_trainer(data, tmp_path, steps=20, max_bad_steps=3)
    trainer.loss_fn = loss_fn
    before = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]
    trainer.train_step()
    trainer.train_step()
    after_good = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]
    assert trainer.train_step() is None and trainer.bad_steps_in_row == 1
    for p, q in zip(after_good, trainer.unwrapped_model.parameters()):
        assert torch.equal(p, q)  # the bad step changed nothing
    assert any(not torch.equal(p, q) for p, q in zip(before, after_good))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row"):
        trainer.fit()


def test_signal_saves_checkpoint_and_stops(data, tmp_path):
    import os
    import signal

    trainer = make_trainer(data, tmp_path, steps=50)
    original = trainer.train_step

    def step_then_signal():
        loss = original()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    trainer.train_step = step_then_signal
    summary = trainer.fit()
    assert summary["status"] == "interrupted" and summary["step"] == 3
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["tokens_seen"] == 3 * 4 * SEQ
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored after fit
