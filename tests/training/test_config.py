"""Config loading: YAML + overrides, bare names, unknown keys, wrong types, batch arithmetic."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from turing_models.errors import UsageError
from turing_models.training import TrainerConfig, gradient_accumulation_steps, parse_config, resolve_config_path
from turing_models.training.config import (
    CONFIGS_DIR,
    distributed_config_path,
    parse_command,
    positional,
    resolve_recipe_path,
)

from _tiny import load_recipe

NLG_SCALES = ["tiny", "125m", "350m", "760m", "1.3b", "2.7b", "6.7b", "8.3b", "13b", "17b"]


@dataclass
class Recipe:
    """A test recipe."""

    train: TrainerConfig = field(default_factory=TrainerConfig)
    dry_run: bool = False


def test_yaml_then_cli_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 0.5\n  max_steps: 7\n")
    cfg = parse_config(Recipe, ["--config", str(path), "--train.lr", "0.25", "--dry-run", "true"])
    assert isinstance(cfg.train, TrainerConfig)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.dry_run) == (0.25, 7, True)


def test_unknown_key_in_yaml_names_closest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lrr: 0.5\n")
    with pytest.raises(UsageError, match=r"unknown config key 'train.lrr' in .*r.yaml; did you mean 'train.lr'\?"):
        parse_config(Recipe, ["--config", str(path)])


@pytest.mark.parametrize("text,message", [
    ("- train\n- lr\n", r"config .*bad.yaml holds a list, not a mapping of settings; write one 'section:' per line"),
    ("just words\n", r"config .*bad.yaml holds a str, not a mapping"),
    ("train:\n  lr: [0.5\n", r"config .*bad.yaml is not valid YAML \(.* at line \d+, column \d+\); fix the syntax"),
    ("train: {lr: 1\n", r"config .*bad.yaml is not valid YAML"),
])
def test_bad_yaml_names_the_file_and_the_fix(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse_config(Recipe, ["--config", str(path)])


def test_empty_yaml_is_no_settings(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert parse_config(Recipe, ["--config", str(path)]) == Recipe()
    path.write_text("train:\ndry_run: true\n")  # an empty section keeps its defaults
    assert parse_config(Recipe, ["--config", str(path)]) == Recipe(dry_run=True)


@pytest.mark.parametrize("argv,dry_run,progress", [
    (["--dry-run"], True, True),
    (["--dry_run"], True, True),
    (["--dry-run", "--train.progress", "false"], True, False),
    (["--train.progress", "false", "--dry-run"], True, False),
    (["--dry-run", "false", "--train.progress"], False, True),
    (["--dry-run=false"], False, True),
])
def test_booleans_are_bare_flags(argv, dry_run, progress):
    cfg = parse_config(Recipe, argv)
    assert (cfg.dry_run, cfg.train.progress) == (dry_run, progress)


def test_dashed_and_underscored_options_are_the_same():
    a = parse_config(Recipe, ["--train.save-every-steps", "5", "--train.micro-batch-size", "4"])
    b = parse_config(Recipe, ["--train.save_every_steps", "5", "--train.micro_batch_size", "4"])
    assert a == b and a.train.save_every_steps == 5


def test_help_comes_from_jsonargparse(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Recipe, ["--help"], prog="recipe.py")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: recipe.py" in out and "--dry-run" in out and "--train.lr" in out


@pytest.mark.parametrize("name", ["save_every_steps", "eval_every", "save_every_minutes"])
def test_negative_intervals_are_refused_and_zero_means_never(name):
    cfg = parse_config(Recipe, [f"--train.{name}", "-1"])
    with pytest.raises(UsageError, match=rf"train.{name} must be >= 0 \(0 means never\), got -1"):
        cfg.train.validate()
    assert parse_config(Recipe, [f"--train.{name}", "0"]).train.validate() == 1


def test_unknown_key_on_cli_names_closest():
    with pytest.raises(UsageError, match=r"'train.warmup_step'.*'train.warmup_steps'"):
        parse_config(Recipe, ["--train.warmup_step", "3"])


def test_wrong_type_names_key():
    with pytest.raises(UsageError, match=r"\"train.max_steps\".*Got value: many; see recipe.py --help"):
        parse_config(Recipe, ["--train.max_steps", "many"], prog="recipe.py")
    with pytest.raises(UsageError, match=r"\"train.schedule\".*'cosine', 'linear', 'constant'.*Got value: triangle"):
        parse_config(Recipe, ["--train.schedule", "triangle"])


@dataclass
class Info:
    """Show a folder."""

    path: str = field(default="", metadata=positional("a folder"))
    json: bool = False


@dataclass
class Copy:
    """Copy a folder."""

    source: str = field(default="", metadata=positional("from"))
    output: str = field(default="", metadata=positional("to"))
    overwrite: bool = False


def test_parse_command_subcommands_and_positionals():
    assert parse_command({"info": Info, "copy": Copy}, ["info", "a/b", "--json"]) == ("info", Info("a/b", True))
    assert parse_command({"info": Info, "copy": Copy}, ["copy", "x", "y"]) == ("copy", Copy("x", "y", False))
    with pytest.raises(UsageError, match=r"unknown command 'inof'; choose one of info, copy; did you mean 'info'\?"):
        parse_command({"info": Info, "copy": Copy}, ["inof", "x"])
    with pytest.raises(UsageError, match=r"unknown config key 'overwrit'; did you mean 'overwrite'\?"):
        parse_command({"info": Info, "copy": Copy}, ["copy", "x", "y", "--overwrit"])
    with pytest.raises(UsageError, match="no command given"):
        parse_command({"info": Info, "copy": Copy}, [], prog="tool.py")


def test_batch_arithmetic():
    assert gradient_accumulation_steps(512, 4, 8) == 16
    with pytest.raises(UsageError, match=r"global_batch_size=10 is not a multiple of train.micro_batch_size=4 x world size 2 = 8"):
        gradient_accumulation_steps(10, 4, 2)


def test_packaged_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert distributed_config_path("ds_zero3.json").is_file()
    assert distributed_config_path("ds_zero3.json").parent == CONFIGS_DIR / "distributed"
    with pytest.raises(UsageError, match="no engine config 'ds_nope.json'.*available: .*ds_zero3.json"):
        distributed_config_path("ds_nope.json")
    corpus = resolve_recipe_path("recipes/data/tinyshakespeare.txt")
    assert corpus.is_absolute() and corpus.is_file()
    assert resolve_recipe_path("elsewhere/x.txt") == Path("elsewhere/x.txt")


def test_bare_names_resolve_per_family():
    assert resolve_config_path("17b.yaml", "nlg") == CONFIGS_DIR / "nlg" / "17b.yaml"
    assert resolve_config_path("tiny", "nlg") == CONFIGS_DIR / "nlg" / "tiny.yaml"
    with pytest.raises(UsageError, match="available: .*tiny"):
        resolve_config_path("huge.yaml", "nlg")


@pytest.mark.parametrize("scale", NLG_SCALES)
def test_every_nlg_recipe_loads_and_plans(scale, capsys):
    recipe = load_recipe("pretrain_nlg")
    cfg = parse_config(recipe.PretrainNLGConfig, ["--config", f"{scale}.yaml"], family="nlg")
    assert cfg.model.scale == scale
    cfg.train.validate(8 if scale != "tiny" else 1)
    recipe.main(["--config", f"{scale}.yaml", "--dry-run"])
    out = capsys.readouterr().out
    assert "FLOPs per token" in out and "ZeRO-3" in out
    if scale == "17b":
        assert cfg.train.lr == 1.5e-4 and cfg.train.precision == "bf16"
        assert cfg.train.distributed == "zero3" and cfg.train.activation_checkpointing
        assert cfg.data.seq_len == 1024
        assert "17,177" in out  # ~17.2B parameters


def test_save_config_yaml_round_trips_and_is_atomic(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    import yaml

    from turing_models.training.config import save_config_yaml

    cfg = parse_config(Recipe, ["--train.lr", "0.5", "--dry-run", "true"])
    path = save_config_yaml(cfg, tmp_path / "run" / "config.yaml")
    written = yaml.safe_load(path.read_text())
    assert written["dry_run"] is True and written["train"]["lr"] == 0.5
    assert written["train"]["max_steps"] == TrainerConfig().max_steps  # defaults are written too
    assert parse_config(Recipe, ["--config", str(path)]) == cfg  # the file reproduces the config
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]

    # a failed write leaves the previous file whole and no temporary file behind
    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        save_config_yaml(parse_config(Recipe, ["--train.lr", "0.25"]), path)
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.5
    assert sorted(p.name for p in Path(path.parent).iterdir()) == ["config.yaml"]


def test_nonpositive_peak_flops_is_refused():
    with pytest.raises(UsageError, match=r"train.peak_flops must be positive .* got 0.0"):
        parse_config(Recipe, ["--train.peak_flops", "0"]).train.validate()
    assert parse_config(Recipe, ["--train.peak_flops", "1e12"]).train.validate() == 1
