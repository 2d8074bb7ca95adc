"""recipes/convert.py consolidate: a trainer checkpoint -> save_pretrained folder, nothing unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

TINY = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
            hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real Trainer run: 3 steps, a checkpoint at step 2 (kept) and the final export."""
    from turing_models.training import Trainer, TrainerConfig

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = TuringNLGForCausalLM(TuringNLGConfig(**TINY))
    data = [{"input_ids": torch.randint(0, 256, (16,))} for _ in range(8)]
    data = [{**d, "labels": d["input_ids"]} for d in data]
    config = TrainerConfig(run_name="tiny", output_dir=str(root), max_steps=3, global_batch_size=2,
                           micro_batch_size=2, lr=1e-2, save_every_steps=2, progress=False, tensorboard=False,
                           log_every=1, peak_flops=1e12)
    trainer = Trainer(model, data, config=config)
    trainer.fit()
    trainer.save_final()
    return root / "tiny", trainer.unwrapped_model


def _logits(path, ids):
    model = TuringNLGForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(ids).logits


def test_consolidates_the_newest_plain_checkpoint(trained_run, tmp_path, run_cli):
    run_dir, model = trained_run
    code, out, err, result = run_cli(["consolidate", run_dir, tmp_path / "out"])
    assert code == 0, err
    assert result["format"] == "plain" and Path(result["checkpoint"]).name == "step-00000003"
    assert "consolidated plain checkpoint" in out
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_logits(tmp_path / "out", ids), model(ids).logits)
    assert (tmp_path / "out" / "tokenizer.json").exists() is False  # the run saved no tokenizer


def test_an_earlier_step_differs_from_the_final_weights(trained_run, tmp_path, run_cli):
    run_dir, _ = trained_run
    step2 = run_dir / "checkpoints" / "step-00000002"
    code, _, err, result = run_cli(["consolidate", step2, tmp_path / "s2", "--dtype", "bfloat16"])
    assert code == 0, err
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    loaded = TuringNLGForCausalLM.from_pretrained(tmp_path / "s2")
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert not torch.allclose(_logits(tmp_path / "s2", ids).float(), _logits(run_dir / "final", ids), atol=1e-3)


def test_dcp_folder_is_refused_and_its_torch_save_conversion_consolidates(tmp_path, run_cli):
    """Accelerate's FSDP layout (torch.distributed.checkpoint under pytorch_model_fsdp_0/) keeps its
    metadata in a pickle, so it is refused with the conversion command; the converted file
    (what dcp_to_torch_save writes: {"model": state_dict}) is read with weights_only."""
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = TuringNLGForCausalLM(TuringNLGConfig(**TINY)).eval()
    step = tmp_path / "run" / "checkpoints" / "step-00000010"
    dcp.save({"model": model.state_dict()}, storage_writer=dcp.FileSystemWriter(str(step / "pytorch_model_fsdp_0")),
             no_dist=True)
    (step / "trainer_state.json").write_text(json.dumps({"step": 10}))
    model.save_pretrained(tmp_path / "cfg")
    argv = ["consolidate", tmp_path / "run", tmp_path / "out", "--config", tmp_path / "cfg" / "config.json",
            "--tokenizer", "gpt2-bpe"]
    code, _, err, _ = run_cli(argv)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "dcp_to_torch" in errors[0] and "pickle" in errors[0]
    torch.save({"model": model.state_dict()}, step / "pytorch_model.bin")
    import shutil

    shutil.rmtree(step / "pytorch_model_fsdp_0")
    code, out, err, result = run_cli(argv)
    assert code == 0, err
    assert result["format"] == "plain"
    ids = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(_logits(tmp_path / "out", ids), model(ids).logits)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_a_damaged_newest_checkpoint_is_passed_over_or_refused_in_one_line(trained_run, tmp_path, run_cli):
    import shutil

    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    weights = copy / "checkpoints" / "step-00000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    config = run_dir / "final"
    code, _, err, result = run_cli(["consolidate", copy, tmp_path / "out", "--config", config])
    assert code == 0, err
    assert Path(result["checkpoint"]).name == "step-00000002"  # the newest that verifies
    code, _, err, _ = run_cli(["consolidate", copy / "checkpoints" / "step-00000003", tmp_path / "out3",
                               "--config", config])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "model.safetensors has 1000 bytes" in errors[0]
    assert not (tmp_path / "out3").exists()


def test_config_of_another_model_is_refused(trained_run, tmp_path, run_cli):
    run_dir, _ = trained_run
    other = TuringNLGForCausalLM(TuringNLGConfig(**{**TINY, "hidden_size": 64}))
    other.config.save_pretrained(tmp_path / "other")
    code, _, err, _ = run_cli(["consolidate", run_dir, tmp_path / "out", "--config", tmp_path / "other"])
    assert code == 2 and "has shape" in err and "--config" in err
    assert not (tmp_path / "out").exists()


def test_missing_config_is_explained(tmp_path, run_cli):
    from safetensors.torch import save_file

    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(step / "model.safetensors"))
    (step / "trainer_state.json").write_text("{}")
    code, _, err, _ = run_cli(["consolidate", tmp_path / "run", tmp_path / "out"])
    assert code == 2 and "no model config" in err and "--config" in err
