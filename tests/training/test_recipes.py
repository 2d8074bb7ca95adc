"""The pretraining recipes end to end: bad input, a short run with export, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tiny import RECIPES, load_recipe

TEXT = "\n\n".join(
    f"First Citizen:\nWe are accounted poor citizens, the patricians good {i}.\n"
    f"What authority surfeits on would relieve us: if they would yield us but the superfluity."
    for i in range(120)
)
SMALL = ["--model.overrides", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}",
         "--data.seq_len", "32", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
         "--train.log_every", "1", "--train.eval_steps", "2", "--train.progress", "false",
         "--train.tensorboard", "false", "--train.warmup_steps", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return path


def args(tmp_path, corpus, *extra):
    return ["--config", "tiny.yaml", *SMALL, "--data.corpus", str(corpus),
            "--data.cache_dir", str(tmp_path / "cache"), "--train.output_dir", str(tmp_path / "runs"), *extra]


def usage_error(argv, capsys, recipe="pretrain_nlg"):
    with pytest.raises(SystemExit) as exc:
        load_recipe(recipe).main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("extra,message", [
    (["--train.lrr", "1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["--train.max_steps", "ten"], '"train.max_steps": Expected a <class \'int\'>. Got value: ten; see pretrain_nlg.py --help'),
    (["--train.save_every_steps", "-1"], "train.save_every_steps must be >= 0 (0 means never), got -1"),
    (["--train.eval_every", "-5"], "train.eval_every must be >= 0 (0 means never), got -5"),
    (["--dry-run", "--data.val_shards", "/nonexistent"], None),
    (["--train.global_batch_size", "6", "--train.micro_batch_size", "4"],
     "train.global_batch_size=6 is not a multiple of train.micro_batch_size=4 x world size 1 = 4"),
    (["--model.overrides", "{hiden_size: 8}"], "'model.overrides.hiden_size'; did you mean 'model.overrides.hidden_size'?"),
    (["--data.corpus", "/nonexistent/corpus.txt"], "data.corpus /nonexistent/corpus.txt does not exist"),
    (["--data.seq_len", "4096"], "exceeds the model's context"),
])
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, corpus, capsys):
    if message is None:  # a dry run does not read data
        load_recipe("pretrain_nlg").main(args(tmp_path, corpus, *extra))
        return
    line = usage_error(args(tmp_path, corpus, *extra), capsys)
    assert message in line


def test_bad_config_name(capsys):
    assert "config 'nope.yaml' not found" in usage_error(["--config", "nope.yaml"], capsys)


def test_short_run_exports_and_refuses_other_model(tmp_path, corpus, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = load_recipe("pretrain_nlg").main(args(tmp_path, corpus, "--train.max_steps", "4",
                                                    "--train.save_every_steps", "2", "--demo", "true",
                                                    "--generate.max_new_tokens", "5"))
    out = capsys.readouterr().out
    assert summary["status"] == "completed" and summary["step"] == 4
    assert "unigram baseline perplexity" in out and "--- sample (prompt 'ROMEO:'" in out
    final = Path(summary["final"])
    assert AutoModelForCausalLM.from_pretrained(final).config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(final).eos_token == "<|endoftext|>"
    _check_run_config_and_card(final.parent, corpus)
    capsys.readouterr()
    other = args(tmp_path, corpus, "--train.max_steps", "6", "--resume", "auto")
    other[other.index("--model.overrides") + 1] = "{hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 2}"
    assert "belongs to another model: hidden_size=32" in usage_error(other, capsys)
    _check_run_config_and_card(final.parent, corpus)  # the refused resume left the run's config alone


def _check_run_config_and_card(run_dir, corpus):
    """run_dir/config.yaml is the exact resolved config (it reproduces the run's config when
    passed back as --config) and the model card of run_dir/final shows it and the training data."""
    import yaml

    from turing_models import hub
    from turing_models.training.config import config_to_dict, parse_config

    file = run_dir / "config.yaml"
    written = yaml.safe_load(file.read_text())
    assert written["data"]["corpus"] == str(corpus) and written["data"]["seq_len"] == 32
    assert written["model"]["overrides"] == {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    assert written["train"]["max_steps"] == 4 and written["train"]["run_name"] == "nlg-tiny"
    assert written["train"]["lr"] is not None  # defaults from tiny.yaml / the dataclass are resolved too
    recipe = load_recipe("pretrain_nlg")
    assert config_to_dict(parse_config(recipe.PretrainNLGConfig, ["--config", str(file)], family="nlg")) == written
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".tmp")]

    card = hub.model_card(run_dir / "final")
    assert f"training data: corpus `{corpus}`, tokenizer `gpt2-bpe`" in card
    assert "### Recipe config (`config.yaml`)" in card and "max_steps: 4" in card


@pytest.mark.slow
def test_kill_9_then_resume_auto(tmp_path, corpus):
    """kill -9 while training and checkpointing every step (the kill often lands mid-write);
    the next run resumes from the newest complete checkpoint and finishes."""
    cmd = [sys.executable, str(RECIPES / "pretrain_nlg.py"),
           *args(tmp_path, corpus, "--train.max_steps", "500", "--train.save_every_steps", "1",
                 "--train.keep_last", "3")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpts = tmp_path / "runs" / "nlg-tiny" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts / "step-00000003" / "trainer_state.json").exists():
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = sorted(p.name for p in ckpts.glob("step-*") if (p / "trainer_state.json").exists())
    assert complete, "no checkpoint was written before the kill"
    last = int(complete[-1].split("-")[1])
    again = [sys.executable, str(RECIPES / "pretrain_nlg.py"),
             *args(tmp_path, corpus, "--train.max_steps", str(last + 2), "--train.save_every_steps", "1",
                   "--train.keep_last", "3", "--resume", "auto")]
    resumed = subprocess.run(again, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {ckpts / complete[-1]} at step {last}" in resumed.stdout + resumed.stderr
    state = json.loads((ckpts / f"step-{last + 2:08d}" / "trainer_state.json").read_text())
    assert state["step"] == last + 2 and len(state["losses"]) == last + 2
    assert not list(ckpts.glob(".tmp-*")), "partial folders are cleared by the next save"


@pytest.mark.parametrize("text,message", [
    ("- model\n- train\n", "holds a list, not a mapping of settings; write one 'section:' per line"),
    ("train:\n  lr: [1\n", "is not valid YAML"),
])
def test_bad_yaml_is_one_line_naming_the_file(text, message, tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    line = usage_error(["--config", str(path)], capsys)
    assert f"config {path} " in line and message in line


def test_validation_on_a_separate_token_folder(tmp_path, corpus, capsys):
    """--data.val_shards: the same run validates on another folder (here: other text), and a
    folder from another tokenizer is refused."""
    from turing_models.data import tokenize_corpus
    from turing_models.training.pretrain import DataSection, validation_tokens

    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"Zebras {i} quietly juggle hexagonal xylophones near Quebec." for i in range(40)))
    held_out = tokenize_corpus(other, tmp_path / "held-out", tokenizer="gpt2-bpe", val_fraction=0.0, progress=False)
    wordpiece = tokenize_corpus(other, tmp_path / "wp", tokenizer="bert-wordpiece", progress=False)
    train_tokens = tokenize_corpus(corpus, tmp_path / "train-tokens", tokenizer="gpt2-bpe", progress=False)
    assert validation_tokens(DataSection(), train_tokens) == (train_tokens, "val")
    assert validation_tokens(DataSection(val_shards=str(held_out)), train_tokens) == (held_out, "train")
    with pytest.raises(Exception, match="was tokenized with another tokenizer"):
        validation_tokens(DataSection(val_shards=str(wordpiece)), train_tokens)

    recipe = load_recipe("pretrain_nlg")
    base = args(tmp_path, corpus, "--data.shards", str(train_tokens), "--train.max_steps", "2")
    same = recipe.main([*base, "--train.run_name", "a"])
    held = recipe.main([*base, "--train.run_name", "b", "--data.val_shards", str(held_out)])
    assert held["eval_loss"] != pytest.approx(same["eval_loss"], rel=1e-3)
    capsys.readouterr()
    assert "was tokenized with another tokenizer" in usage_error(
        [*base, "--train.run_name", "c", "--data.val_shards", str(wordpiece)], capsys)


def test_download_while_offline_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TURING_CHECKPOINTS", str(tmp_path / "store"))
    line = usage_error(["download", "some-org/some-model"], capsys, recipe="convert")
    assert "cannot download some-org/some-model" in line
    assert not (tmp_path / "store").exists()
    (tmp_path / "store" / "some-org").mkdir(parents=True)  # folders that were there before stay
    usage_error(["download", "some-org/some-model"], capsys, recipe="convert")
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["some-org"]
    assert not list((tmp_path / "store" / "some-org").iterdir())


@pytest.mark.parametrize("recipe,argv", [
    ("pretrain_nlg", ["--help"]), ("pretrain_nlu", ["--help"]), ("prepare_data", ["tokenize", "--help"]),
    ("convert", ["push", "--help"]), ("generate", ["--help"]),
])
def test_every_recipe_help_comes_from_jsonargparse_with_bare_flags(recipe, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        load_recipe(recipe).main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: " in out and "[{true,false}]" in out  # jsonargparse's boolean options, value optional


def test_no_recipe_edits_sys_path_or_uses_argparse():
    for path in RECIPES.glob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, path
        assert "import argparse" not in text and "ArgumentParser(" not in text, path


def test_cli_main_maps_usage_errors_and_faults_and_keeps_bugs(capsys):
    from turing_models.errors import RuntimeFault, UsageError, cli_main

    class DiskFull(RuntimeFault):
        exit_status = 74

    def fails(exc):
        @cli_main
        def main():
            raise exc
        return main

    for exc, status in ((UsageError("bad value;\n fix it"), 2), (DiskFull("no space left"), 74)):
        with pytest.raises(SystemExit) as info:
            fails(exc)()
        assert info.value.code == status
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for bug in (KeyError("x"), RuntimeError("boom"), TypeError("wrong")):  # bugs keep their traceback
        with pytest.raises(type(bug)):
            fails(bug)()
