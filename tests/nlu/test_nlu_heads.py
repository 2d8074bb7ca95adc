"""Heads and pretraining objectives; Auto-class registration."""

from __future__ import annotations

import pytest
import torch
import transformers

from factories import nlu_config

import turing_models.nlu as nlu
from turing_models.nlu import (
    TuringNLUForMaskedLM,
    TuringNLUForPreTraining,
    TuringNLUForSequenceClassification,
)


def _config(**kw):
    return nlu_config(**kw)


def _mlm_batch(vocab=64, mask_id=4):
    gen = torch.Generator().manual_seed(3)
    original = torch.randint(5, vocab, (3, 10), generator=gen)
    mask = torch.ones_like(original)
    mask[2, 6:] = 0
    original = original.masked_fill(mask == 0, 0)
    picked = torch.zeros_like(original, dtype=torch.bool)
    picked[:, [1, 4]] = True
    labels = original.masked_fill(~picked, -100)
    return original.masked_fill(picked, mask_id), mask, labels, original


def test_pretraining_mlm_loss_equals_masked_lm(tmp_path):
    config = _config()
    mlm = TuringNLUForMaskedLM(config).eval()
    mlm.save_pretrained(tmp_path)
    pre = TuringNLUForPreTraining.from_pretrained(tmp_path).eval()
    ids, mask, labels, _ = _mlm_batch()
    with torch.no_grad():
        a = mlm(input_ids=ids, attention_mask=mask, labels=labels)
        b = pre(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=1e-6)
    # sparse prediction: logits for the masked positions only
    torch.testing.assert_close(b.mlm_logits, a.logits[labels != -100], atol=1e-6, rtol=1e-6)


def test_electra_objective_trains_generator_and_discriminator(tmp_path):
    config = _config(pretraining_objective="electra", generator_hidden_size=16, generator_num_attention_heads=2)
    model = TuringNLUForPreTraining(config).train()
    ids, mask, labels, original = _mlm_batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    # replaced-token labels: 1 exactly where the sampled token differs from the original
    masked = labels != -100
    assert torch.all(out.rtd_labels[~masked] == 0)
    assert out.rtd_logits.shape == ids.shape
    torch.testing.assert_close(out.loss, out.mlm_loss + 50.0 * out.rtd_loss)
    out.loss.backward()
    assert model.generator.encoder.layers[0].mlp.fc_in.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].mlp.fc_in.weight.grad.abs().sum() > 0
    assert model.discriminator_head[0].weight.grad.abs().sum() > 0
    # the discriminator fine-tunes: its encoder loads into a task head
    model.save_pretrained(tmp_path)
    clf = TuringNLUForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert clf.config.num_labels == 3
    torch.testing.assert_close(clf.encoder.layers[1].attention.qkv.weight, model.encoder.layers[1].attention.qkv.weight)


def test_electra_needs_labels():
    model = TuringNLUForPreTraining(_config(pretraining_objective="electra"))
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "auto,cls",
    [
        (transformers.AutoModel, nlu.TuringNLUModel),
        (transformers.AutoModelForMaskedLM, nlu.TuringNLUForMaskedLM),
        (transformers.AutoModelForSequenceClassification, nlu.TuringNLUForSequenceClassification),
        (transformers.AutoModelForQuestionAnswering, nlu.TuringNLUForQuestionAnswering),
        (transformers.AutoModelForTokenClassification, nlu.TuringNLUForTokenClassification),
    ],
)
def test_auto_classes_load_our_folders(tmp_path, auto, cls):
    model = cls(_config())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is cls
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_mlm_decoder_is_tied_after_reload(tmp_path):
    TuringNLUForMaskedLM(_config()).save_pretrained(tmp_path)
    model = TuringNLUForMaskedLM.from_pretrained(tmp_path)
    assert model.lm_head.decoder.weight.data_ptr() == model.encoder.embeddings.word_embeddings.weight.data_ptr()


def test_attn_implementation_choices(tmp_path):
    TuringNLUForMaskedLM(_config()).save_pretrained(tmp_path)
    eager = TuringNLUForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = TuringNLUForMaskedLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager"
    ids, mask, _, _ = _mlm_batch()
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="turing, sdpa, eager"):
        TuringNLUForMaskedLM.from_pretrained(tmp_path, attn_implementation="flash_attention_9")
    from turing_models.layers.attention import kernels_usable

    if kernels_usable():  # CUDA, or the interpreter the suite turns on without one
        turing = TuringNLUForMaskedLM.from_pretrained(tmp_path, attn_implementation="turing").eval()
        with torch.no_grad():
            torch.testing.assert_close(turing(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                                       sdpa(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                                       atol=1e-4, rtol=1e-4)
    else:
        with pytest.raises(ValueError, match="attn_implementation='turing' cannot run here"):
            TuringNLUForMaskedLM.from_pretrained(tmp_path, attn_implementation="turing")
