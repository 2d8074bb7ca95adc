"""Config loading: YAML + overrides, bare names, unknown keys, wrong types, batch arithmetic."""

from dataclasses import dataclass, field

import pytest

from turing_models.errors import UsageError
from turing_models.training import TrainerConfig, gradient_accumulation_steps, parse_config, resolve_config_path
from turing_models.training.config import CONFIGS_DIR

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
    with pytest.raises(UsageError, match=r"unknown config key 'train.lrr'; did you mean 'train.lr'\?"):
        parse_config(Recipe, ["--config", str(path)])


def test_unknown_key_on_cli_names_closest():
    with pytest.raises(UsageError, match=r"'train.warmup_step'.*'train.warmup_steps'"):
        parse_config(Recipe, ["--train.warmup_step", "3"])


def test_wrong_type_names_key():
    with pytest.raises(UsageError, match=r"bad value for 'train.max_steps'"):
        parse_config(Recipe, ["--train.max_steps", "many"])
    with pytest.raises(UsageError, match=r"'train.schedule'.*one of 'cosine', 'linear', 'constant'"):
        parse_config(Recipe, ["--train.schedule", "triangle"])


def test_batch_arithmetic():
    assert gradient_accumulation_steps(512, 4, 8) == 16
    with pytest.raises(UsageError, match=r"global_batch_size=10 is not a multiple of train.micro_batch_size=4 x world size 2 = 8"):
        gradient_accumulation_steps(10, 4, 2)


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
    recipe.main(["--config", f"{scale}.yaml", "--dry-run", "true"])
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
