"""Loading: pipelines on our folders, Hub ids from an offline cache, the converter CLI, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer, pipeline

from turing_models.errors import UsageError
from turing_models.nlu import (
    TuringNLUConfig,
    TuringNLUForMaskedLM,
    TuringNLUForSequenceClassification,
    TuringNLUForTokenClassification,
    TuringNLUModel,
)
from turing_models.nlu.adapter_bert import export_to_hf

from factories import make_batch, make_hf

WORDPIECE = Path(__import__("turing_models").__file__).parent / "data" / "builtin_tokenizers" / "bert-wordpiece"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(WORDPIECE)


def _tiny(tokenizer, **kw):
    return TuringNLUConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=64, **kw)


def test_builtin_wordpiece_tokenizer(tokenizer):
    assert 8000 <= len(tokenizer) <= 16384
    enc = tokenizer("Who led the team?", "Kawann Short led the team in sacks.")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert set(enc["token_type_ids"]) == {0, 1}
    assert tokenizer.mask_token_id == 4 and tokenizer.pad_token_id == 0
    assert (WORDPIECE / "SOURCE.md").exists() and (WORDPIECE / "LICENSE-CC-BY-SA-4.0.txt").exists()


def test_fill_mask_pipeline_matches_model(tmp_path, tokenizer):
    model = TuringNLUForMaskedLM(_tiny(tokenizer)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path))
    assert isinstance(fill.model, TuringNLUForMaskedLM)
    text = "the king is [MASK] today ."
    results = fill(text, top_k=3)
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, enc["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    probs, ids = logits.softmax(-1).topk(3)
    assert [r["token"] for r in results] == ids.tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), probs, atol=1e-5, rtol=1e-4)


def test_text_and_token_classification_pipelines(tmp_path, tokenizer):
    labels = {0: "negative", 1: "positive"}
    TuringNLUForSequenceClassification(_tiny(tokenizer, id2label=labels)).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    clf = pipeline("text-classification", model=str(tmp_path / "clf"))
    out = clf(["a fine day in verona", "a plague on both your houses"])
    assert len(out) == 2 and {o["label"] for o in out} <= set(labels.values())
    assert all(0.0 < o["score"] <= 1.0 for o in out)

    TuringNLUForTokenClassification(_tiny(tokenizer, id2label={0: "O", 1: "B-PER"})).save_pretrained(tmp_path / "ner")
    tokenizer.save_pretrained(tmp_path / "ner")
    ner = pipeline("token-classification", model=str(tmp_path / "ner"))
    assert isinstance(ner("romeo loves juliet"), list)


def test_hub_id_loads_from_an_offline_cache(tmp_path, monkeypatch):
    """A BERT checkpoint in an HF_HUB_CACHE-style snapshot loads by Hub id, offline, converted on load."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_model = make_hf("bert", "ForMaskedLM")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--turing-test--tiny-bert"
    hf_model.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    model = TuringNLUForMaskedLM.from_pretrained("turing-test/tiny-bert", cache_dir=tmp_path / "hub").eval()
    ids, mask = make_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                                   hf_model(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(UsageError, match="no config.json"):
        TuringNLUForMaskedLM.from_pretrained("turing-test/not-cached", cache_dir=tmp_path / "hub")


def test_pytorch_bin_with_legacy_layernorm_names(tmp_path):
    hf_model = make_hf("bert", "Model")
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in hf_model.state_dict().items()}
    tmp_path.mkdir(exist_ok=True)
    hf_model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = TuringNLUModel.from_pretrained(tmp_path).eval()
    ids, mask = make_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).pooler_output,
                                   hf_model(input_ids=ids, attention_mask=mask).pooler_output, atol=1e-5, rtol=1e-5)


def test_convert_round_trip_is_exact(hf_folder, tmp_path):
    hf_model, folder = hf_folder("roberta", "ForMaskedLM")
    TuringNLUForMaskedLM.from_pretrained(folder).save_pretrained(tmp_path / "turing")
    assert json.loads((tmp_path / "turing" / "config.json").read_text())["model_type"] == "turing_nlu"
    export_to_hf(TuringNLUForMaskedLM.from_pretrained(tmp_path / "turing"), tmp_path / "back")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back")
    assert type(back) is transformers.RobertaForMaskedLM
    for key, value in hf_model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# ----------------------------------------------------------------------------- bad input
def test_unsupported_checkpoint_type(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' checkpoint.*TuringNLGForCausalLM"):
        TuringNLUModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' checkpoint"):
        TuringNLUConfig.from_pretrained(tmp_path)


def test_config_from_pretrained_converts_public_configs(hf_folder):
    _, folder = hf_folder("xlm-roberta", "Model")
    config = TuringNLUConfig.from_pretrained(folder, unpad_inputs=False)
    assert (config.position_offset, config.classifier_head, config.source_model_type) == (2, "dense", "xlm-roberta")
    assert config.unpad_inputs is False and config.hidden_size == 32


def test_converted_shape_mismatch_names_tensor_and_shapes(hf_folder):
    _, folder = hf_folder("bert", "Model")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 40  # the weights have 37
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError) as err:
        TuringNLUModel.from_pretrained(folder)
    message = str(err.value)
    assert re.search(r"'(bert\.)?encoder\.layer\.0\.intermediate\.dense\.(weight|bias)' has shape \[37(, 32)?\] but "
                     r"its config needs \[40(, 32)?\]", message), message


def test_native_shape_mismatch_names_tensor_and_shapes(tmp_path):
    TuringNLUModel(TuringNLUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 60
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"embeddings.word_embeddings.weight.*\[50, 16\].*\[60, 16\]"):
        TuringNLUModel.from_pretrained(tmp_path)


def test_too_long_sequences_say_how_to_truncate():
    model = TuringNLUModel(TuringNLUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32, max_position_embeddings=8))
    with pytest.raises(ValueError, match=r"9 tokens.*8 positions.*truncation=True, max_length=8"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long))
    roberta_style = TuringNLUModel(TuringNLUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   max_position_embeddings=10, position_offset=2, pad_token_id=1))
    with pytest.raises(ValueError, match="max_length=8"):
        roberta_style(input_ids=torch.full((1, 9), 5))


def test_rows_without_real_tokens():
    model = TuringNLUModel(TuringNLUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32))
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    for unpad in (True, False):
        model.config.unpad_inputs = unpad
        with pytest.raises(ValueError, match=r"rows \[1\] have no real tokens"):
            model(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=mask)


def test_out_of_range_ids_and_token_types():
    model = TuringNLUModel(TuringNLUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32, type_vocab_size=1))
    with pytest.raises(ValueError, match=r"vocab_size=50"):
        model(input_ids=torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="type_vocab_size=1"):
        model(input_ids=torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 1]]))


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    transformers.T5Config(num_layers=1, d_model=8, num_heads=2, vocab_size=10).save_pretrained(tmp_path / "t5")
    proc = subprocess.run(
        [sys.executable, "recipes/convert.py", "to-turing", str(tmp_path / "t5"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "t5" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_adapter_errors_are_usage_errors(hf_folder, tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UsageError, match="'gpt2' checkpoint.*TuringNLGForCausalLM"):
        TuringNLUModel.from_pretrained(tmp_path / "gpt2")
    _, folder = hf_folder("bert", "Model")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "swish"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="hidden_act='swish'"):
        TuringNLUModel.from_pretrained(folder)
    with pytest.raises(UsageError, match="no config.json"):
        TuringNLUModel.from_pretrained(tmp_path)


def test_xlmr_style_sentencepiece_tokenizer_beside_the_model(tmp_path):
    """An XLM-R-style SentencePiece (unigram) fast tokenizer saved beside a RoBERTa-positioned model."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaTokenizerFast

    texts = ["the quick brown fox jumps over the lazy dog", "der schnelle braune fuchs", "le renard brun rapide"] * 20
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(texts, vocab_size=60, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                           unk_token="<unk>")
    tok = XLMRobertaTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    config = TuringNLUConfig.from_name("xl", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=48, max_position_embeddings=66)
    assert (config.position_offset, config.pad_token_id, tok.pad_token_id) == (2, 1, 1)
    TuringNLUForMaskedLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path))
    results = fill("the quick <mask> fox", top_k=2)
    assert len(results) == 2 and all(r["sequence"].startswith("the quick") for r in results)
