"""pretrain_nlu.py: masked LM and replaced-token detection on a tiny TuringNLU, and every config."""

from pathlib import Path

import pytest

from _tiny import load_recipe
from test_recipes import TEXT

NLU_CONFIGS = ["tiny", "tiny-electra", "base", "base-electra", "large", "large-electra", "xl"]
SMALL = ["--model.overrides", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
         "--data.seq_len", "32", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
         "--train.max_steps", "3", "--train.eval_steps", "2", "--train.progress", "false",
         "--train.tensorboard", "false", "--train.warmup_steps", "1", "--train.log_every", "1"]


@pytest.mark.parametrize("name", NLU_CONFIGS)
def test_configs_plan(name, capsys):
    load_recipe("pretrain_nlu").main(["--config", name, "--dry-run", "true"])
    out = capsys.readouterr().out
    assert "config OK: TuringNLU" in out and "FLOPs per token" in out


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_short_pretraining_exports_encoder(objective, tmp_path):
    from turing_models.nlu import TuringNLUForSequenceClassification

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    summary = load_recipe("pretrain_nlu").main(
        ["--config", "tiny.yaml", *SMALL, "--model.objective", objective, "--data.corpus", str(corpus),
         "--data.cache_dir", str(tmp_path / "cache"), "--train.output_dir", str(tmp_path / "runs"),
         "--train.save_every_steps", "3"])
    assert summary["status"] == "completed" and summary["step"] == 3
    assert summary["eval_loss"] > 0
    head = TuringNLUForSequenceClassification.from_pretrained(summary["final"], num_labels=2)
    assert head.config.hidden_size == 32
    # the run folder keeps the exact config, and the model card shows it and the training data
    import yaml

    from turing_models import hub

    run_dir = Path(summary["final"]).parent
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["model"]["objective"] == objective and written["data"]["corpus"] == str(corpus)
    card = hub.model_card(run_dir / "final")
    assert f"corpus `{corpus}`" in card and f"objective: {objective}" in card


def test_both_families_take_attn_implementation():
    """One run_pretrain serves both families: the same model section, attention choice included."""
    from turing_models.training.config import parse_config
    from turing_models.training.pretrain import FAMILIES

    for family in ("nlg", "nlu"):
        spec = FAMILIES[family]
        cfg = parse_config(spec.config_cls, ["--config", "tiny", "--model.attn_implementation", "eager"], family=family)
        assert spec.model_config(cfg)._attn_implementation == "eager"


def test_collator_lives_in_the_data_package():
    recipe = load_recipe("pretrain_nlu")
    assert not hasattr(recipe, "PackedMLMCollator")
    from turing_models.data import PackedMLMCollator, load_tokenizer
    from turing_models.training.pretrain import FAMILIES, PretrainNLUConfig

    collator = FAMILIES["nlu"].collator(PretrainNLUConfig(), load_tokenizer("bert-wordpiece"), 0)
    assert isinstance(collator, PackedMLMCollator)
