"""Bad checkpoints and arguments: one clear line each, exit status 2 from the recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import load_script, save_gpt2

from turing_models.errors import UsageError
from turing_models.nlg import TuringNLG

ROOT = Path(__file__).resolve().parents[2]
generate_recipe = load_script("recipes/generate.py", "recipe_generate")


def _edit_config(folder, **changes):
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture()
def nlg_copy(nlg_folder, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(nlg_folder, dst)
    return dst


def _run_recipe(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        generate_recipe.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_other_model_type(nlg_copy, capsys):
    _edit_config(nlg_copy, model_type="bert")
    with pytest.raises(UsageError, match="model_type='bert'.*'turing_nlg'.*'gpt2'"):
        TuringNLG.from_pretrained(nlg_copy)
    assert "model_type='bert'" in _run_recipe(capsys, str(nlg_copy), "hi")


def test_wrong_tensor_shape_names_tensor_and_both_shapes(nlg_copy, tmp_path, capsys):
    _edit_config(nlg_copy, max_position_embeddings=128)
    with pytest.raises(UsageError) as info:
        TuringNLG.from_pretrained(nlg_copy)
    msg = str(info.value)
    assert "embed_positions.weight" in msg and "[64, 64]" in msg and "[128, 64]" in msg
    assert "embed_positions.weight" in _run_recipe(capsys, str(nlg_copy), "hi")
    # the same for a GPT-2 checkpoint, named in GPT-2's own layout
    gpt2 = tmp_path / "gpt2"
    save_gpt2(gpt2, n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    _edit_config(gpt2, n_inner=100)
    with pytest.raises(UsageError, match=r"'transformer.h.0.mlp.c_fc.(weight|bias)' has shape \[(32, )?128\].*needs \[(32, )?100\]"):
        TuringNLG.from_pretrained(gpt2)


def test_missing_weight_files(nlg_copy, capsys):
    os.remove(nlg_copy / "model.safetensors")
    with pytest.raises(UsageError, match="no weight files"):
        TuringNLG.from_pretrained(nlg_copy)
    assert "no weight files" in _run_recipe(capsys, str(nlg_copy), "hi")


def test_truncated_weights_are_one_line(nlg_copy, capsys):
    weights = nlg_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UsageError, match="damaged or truncated"):
        TuringNLG.from_pretrained(nlg_copy)
    assert "damaged or truncated" in _run_recipe(capsys, str(nlg_copy), "hi")


def test_pickled_weights_are_refused_and_never_run(nlg_copy, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    os.remove(nlg_copy / "model.safetensors")
    import torch

    torch.save({"payload": Payload()}, nlg_copy / "pytorch_model.bin")
    assert "never unpickled" in _run_recipe(capsys, str(nlg_copy), "hi")
    assert not (tmp_path / "ran").exists()


def test_missing_folder_and_config(tmp_path, capsys):
    assert "does not exist" in _run_recipe(capsys, str(tmp_path / "nowhere"), "hi")
    assert "no config.json" in _run_recipe(capsys, str(tmp_path), "hi")


def test_prompt_longer_than_context(nlg_folder, capsys):
    err = _run_recipe(capsys, str(nlg_folder), "hello world " * 40, "--max-new-tokens", "4")
    assert "longer than the model's context of 64 tokens" in err


def test_bad_flags(nlg_folder, capsys):
    assert "--top-p" in _run_recipe(capsys, str(nlg_folder), "hi", "--top-p", "1.5")
    assert "--temperature" in _run_recipe(capsys, str(nlg_folder), "hi", "--temperature", "0")
    with pytest.raises(SystemExit) as info:  # argparse's own usage errors are status 2 too
        generate_recipe.main([str(nlg_folder), "hi", "--max-new-tokens", "many"])
    assert info.value.code == 2


def test_generate_streams_greedy_and_sampled(nlg_folder, capsys):
    assert generate_recipe.main([str(nlg_folder), "Once upon a time", "--greedy", "--max-new-tokens", "6"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("Once upon a time") and len(greedy) > len("Once upon a time")
    assert generate_recipe.main([str(nlg_folder), "Once upon a time", "--greedy", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == greedy
    args = [str(nlg_folder), "The quick", "--seed", "1", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.7",
            "--max-new-tokens", "5"]
    assert generate_recipe.main(args) == 0
    first = capsys.readouterr().out
    assert generate_recipe.main(args) == 0
    assert capsys.readouterr().out == first
    assert generate_recipe.main([str(nlg_folder), "Hello", "--num-beams", "2", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_help_documents_everything(capsys):
    with pytest.raises(SystemExit) as info:
        generate_recipe.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--temperature", "--top-k", "--top-p", "--max-new-tokens", "--num-beams", "--seed", "--greedy",
                 "--device", "--dtype", "--tokenizer", "standard input", "Hub id", "exit with status 2"):
        assert flag in " ".join(text.split()), flag


def test_prompt_from_stdin(nlg_folder, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello world"))
    assert generate_recipe.main([str(nlg_folder), "--greedy", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Hello world")
    monkeypatch.setattr(sys, "stdin", io.StringIO("   "))
    assert "prompt is empty" in _run_recipe(capsys, str(nlg_folder), "-")


def test_recipe_process_exit_status_is_2_with_one_line(tmp_path):
    script = str(ROOT / "recipes" / "generate.py")
    bad = subprocess.run([sys.executable, script, str(tmp_path / "missing"), "hi"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.strip().count("\n") == 0, bad.stderr
