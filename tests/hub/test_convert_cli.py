"""recipes/convert.py: public <-> Turing conversion with parity, download, consolidate, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_gpt2_to_turing_and_back(gpt2_dir, tmp_path, run_cli):
    from transformers import GPT2LMHeadModel

    from turing_models.nlg import TuringNLGForCausalLM

    code, out, err, result = run_cli(["to-turing", gpt2_dir, tmp_path / "nlg"])
    assert code == 0, err
    assert "parity GPT2LMHeadModel -> TuringNLGForCausalLM: max |difference|" in out and "OK" in out
    assert result["parity"]["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "nlg" / "config.json").read_text())["model_type"] == "turing_nlg"
    assert (tmp_path / "nlg" / "tokenizer.json").is_file()

    # the written folder is an ordinary TuringNLG checkpoint with GPT-2's logits
    ids = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])
    ours = TuringNLGForCausalLM.from_pretrained(tmp_path / "nlg").eval()
    ref = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)

    code, out, err, result = run_cli(["from-turing", tmp_path / "nlg", tmp_path / "gpt2"])
    assert code == 0, err
    assert "TuringNLGForCausalLM -> GPT2LMHeadModel" in out
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert _leftovers(tmp_path) == []


def test_padded_nlg_exports_to_gpt2(nlg_dir, tmp_path, run_cli):
    code, out, err, result = run_cli(["from-turing", nlg_dir, tmp_path / "gpt2"])
    assert code == 0, err
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 50257  # padding rows dropped
    assert result["parity"]["max_abs_diff"] < 1e-4


def test_bert_to_turing_and_back(bert_dir, tmp_path, run_cli):
    from transformers import BertForMaskedLM

    code, out, err, result = run_cli(["to-turing", bert_dir, tmp_path / "nlu"])
    assert code == 0, err
    assert result["class"] == "TuringNLUForMaskedLM"
    assert "parity BertForMaskedLM -> TuringNLUForMaskedLM" in out
    assert result["parity"]["max_abs_diff"] < 1e-4
    code, out, err, result = run_cli(["from-turing", tmp_path / "nlu", tmp_path / "bert"])
    assert code == 0, err
    assert result["class"] == "BertForMaskedLM"
    ids = torch.tensor([[2, 100, 200, 300, 3]])
    a = BertForMaskedLM.from_pretrained(bert_dir).eval()
    b = BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=1e-4, rtol=1e-4)


def test_roberta_classifier_to_turing(tmp_path, run_cli):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=8192, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1, num_labels=3)
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "roberta")
    code, out, err, result = run_cli(["to-turing", tmp_path / "roberta", tmp_path / "nlu"])
    assert code == 0, err
    assert result["class"] == "TuringNLUForSequenceClassification"
    assert result["parity"]["max_abs_diff"] < 1e-4
    assert "no tokenizer found" in out


def test_failed_parity_writes_nothing(gpt2_dir, tmp_path, capsys, monkeypatch, convert_recipe):
    convert = convert_recipe
    real = convert.parity
    monkeypatch.setattr(convert, "parity", lambda *a: {**real(*a), "max_abs_diff": 0.5})
    with pytest.raises(SystemExit) as exc:
        convert.main(["to-turing", str(gpt2_dir), str(tmp_path / "nlg")])
    assert exc.value.code == 1
    assert "parity check failed" in capsys.readouterr().err
    assert not (tmp_path / "nlg").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["to-turing", "{tmp}/missing", "{tmp}/out"], "does not exist"),
    (["from-turing", "{gpt2}", "{tmp}/out"], "not a TuringNLG / TuringNLU"),
    (["to-turing", "{nlg}", "{tmp}/out"], "already a Turing checkpoint"),
    (["to-turing", "{gpt2}", "{tmp}"], "already exists"),
    (["download", "not a repo id"], "not a Hub model id"),
    (["download", "openai-community/gpt2", "--dir", "{tmp}/gpt2"], "offline mode is on"),
    (["consolidate", "{tmp}", "{tmp}/out"], "holds no training checkpoint"),
    (["onnx", "{gpt2}", "{tmp}/out"], "'gpt2' model"),
    (["push", "{tmp}", "org/name", "--dry-run"], "no config.json"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, gpt2_dir, nlg_dir, monkeypatch, run_cli):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "keep.txt").write_text("x")
    argv = [a.format(tmp=tmp_path, gpt2=gpt2_dir, nlg=nlg_dir) for a in argv]
    code, out, err, _ = run_cli(argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_download_places_the_snapshot_in_the_store(tmp_path, monkeypatch, run_cli):
    """A stand-in for the Hub: snapshot_download writes the files it was asked for."""
    calls = []

    def fake_snapshot_download(repo_id, *, local_dir, allow_patterns, revision=None, token=None):
        calls.append((repo_id, Path(local_dir).name, tuple(allow_patterns)))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        if "*.json" in allow_patterns:
            (Path(local_dir) / "config.json").write_text('{"model_type": "gpt2"}')
            (Path(local_dir) / ".cache").mkdir(exist_ok=True)
        else:
            (Path(local_dir) / "pytorch_model.bin").write_bytes(b"weights")
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("TURING_CHECKPOINTS", str(tmp_path / "store"))
    code, out, err, result = run_cli(["download", "some-org/tiny-gpt2"])
    assert code == 0, err
    dest = tmp_path / "store" / "some-org" / "tiny-gpt2"
    assert Path(result["path"]) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "pytorch_model.bin"]
    # safetensors first; .bin weights only because the repository had none
    assert [c[2] for c in calls][1] == ("pytorch_model*.bin",)
    assert all(c[1] == ".tiny-gpt2.partial" for c in calls)
    assert [p.name for p in dest.parent.iterdir()] == ["tiny-gpt2"]


def test_cli_runs_as_a_script(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "convert.py"), "consolidate",
                           str(tmp_path / "nowhere"), str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: checkpoint") and "does not exist" in proc.stderr


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("damage", ["truncated", "pickled"])
@pytest.mark.parametrize("command", ["from-turing", "to-turing"])
def test_damaged_or_hostile_weights_are_one_line_exit_2(damage, command, nlg_dir, gpt2_dir, tmp_path, run_cli):
    """A truncated model.safetensors, or a folder holding only a pytorch_model.bin with a code payload."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(nlg_dir if command == "from-turing" else gpt2_dir, source)
    weights = source / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    else:
        weights.unlink()
        torch.save({"payload": _Payload(tmp_path / "ran")}, source / "pytorch_model.bin")
    code, out, err, _ = run_cli([command, source, tmp_path / "out"])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert ("damaged or truncated" if damage == "truncated" else "never unpickled") in lines[0]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
