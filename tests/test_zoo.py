"""The zoo's names, configs and the README tables generated from them."""

from pathlib import Path

import pytest
import torch

from turing_models import zoo

README = Path(__file__).resolve().parents[1] / "README.md"


def test_names_cover_both_families():
    names = zoo.names()
    assert "nlg-17b" in names and "nlu-base" in names
    assert names == zoo.names("nlg") + zoo.names("nlu")


def test_bare_scale_resolves_to_nlg_first_and_nlu_only_names():
    assert zoo.config("17b").model_type == "turing_nlg"
    assert zoo.config("base").model_type == "turing_nlu"
    assert zoo.config("nlg-tiny").num_hidden_layers == zoo.config("tiny").num_hidden_layers


def test_turing_nlg_17b_entry_matches_the_published_shape():
    e = zoo.entry("nlg-17b")
    assert (e.layers, e.hidden, e.heads, e.head_dim, e.context) == (78, 4256, 28, 152, 1024)
    assert 17.0e9 < e.parameters < 17.4e9


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="nlg-17b"):
        zoo.config("nlg-99b")


def test_entry_count_equals_the_built_model_on_meta():
    for name in ("nlg-125m", "nlu-base"):
        with torch.device("meta"):
            model = zoo.build(name)
        assert model.num_parameters() == zoo.entry(name).parameters, name


def test_resolve_prefers_local_store(tmp_path, monkeypatch):
    monkeypatch.setenv("TURING_CHECKPOINTS", str(tmp_path))
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert zoo.resolve("org/model") == str(tmp_path / "org" / "model")
    assert zoo.resolve("other/model") == "other/model"
    assert zoo.resolve(tmp_path) == str(tmp_path)


def test_readme_zoo_tables_are_current():
    text = README.read_text()
    for family in zoo.FAMILIES:
        assert zoo.markdown_table(family) in text, (
            f"README.md's {family} zoo table is stale: paste the output of `python -m turing_models.zoo`"
        )
