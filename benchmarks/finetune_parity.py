#!/usr/bin/env python
"""Fine-tuning parity: ``recipes/finetune.py`` against a reference written the way transformers'
example scripts are (``run_qa.py`` + ``utils_qa.py`` postprocessing, ``run_glue.py``), from the
same BERT checkpoint, on the same data, with the same seeds, steps and hyperparameters.

    python benchmarks/finetune_parity.py              # QA (SQuAD v2 format, 3 seeds) + classification (10 seeds)
    python benchmarks/finetune_parity.py --quick      # smoke run: 1 seed, a few steps
    python benchmarks/finetune_parity.py --model google/bert_uncased_L-2_H-128_A-2   # a real checkpoint

The data (built once under ``checkpoints/finetune-parity/data``):

* **QA, SQuAD v2.0 format**: the bundled XQuAD English set (48 articles, 1190 questions), split by
  article (38 train / 10 dev). Unanswerable questions are added to every paragraph: two questions
  of another article's paragraphs in the same split (``is_impossible``), about a third of all
  questions. They are easier to reject than SQuAD 2.0's hand-written ones, but exercise the same
  null-score path on both sides.
* **classification**: the bundled UCI sentiment sentences (3000), 20 % held out, seeded.

The checkpoint (built once under ``checkpoints/finetune-parity/bert-mlm``, unless ``--model`` is
given): no encoder can be downloaded here, so a BERT-tiny-shaped ``BertForMaskedLM`` (2 layers,
hidden 128, 2 heads, the shape of ``google/bert_uncased_L-2_H-128_A-2``) with a WordPiece
vocabulary trained on the training sides of both sets plus the bundled Shakespeare is
MLM-pretrained for a few minutes. It is an ordinary transformers BERT folder: the reference loads
it with ``AutoModelForQuestionAnswering`` / ``AutoModelForSequenceClassification``, ours with
``--model <folder>`` (converted to TuringNLU on load).

Both sides: fp32, AdamW (beta2 0.999, eps 1e-8, no weight decay), linear decay after a linear
warm-up, gradient clipping at 1.0, dropout as in the checkpoint, padding to the longest sequence
of each batch, v2 "no answer" when the null score beats the best span by more than 0.0 (the
examples' ``null_score_diff_threshold``). The wall time of a side covers loading, preprocessing,
training, saving and scoring the eval set. The seeds are the same numbers on both sides, but the
two trainers draw the head initialisation, the batch order and the dropout masks differently,
so single runs differ by noise; the goal is on the mean over the seeds. A classification run
takes about 17 s and its F1 varies by about 1.3 points from seed to seed on either side, so a
3-seed mean is itself uncertain by about 0.75 point per side: classification runs 10 seeds by
default (the difference of the means then has a standard error near 0.6). The report prints that
standard error beside the difference.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import statistics
import string
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "checkpoints" / "finetune-parity"
XQUAD = ROOT / "recipes" / "data" / "qa" / "xquad.en.json"
UCI = ROOT / "recipes" / "data" / "classification" / "uci_sentiment"
SHAKESPEARE = ROOT / "recipes" / "data" / "tinyshakespeare.txt"


@dataclass
class Settings:
    """What both sides share."""

    qa_steps: int = 600
    qa_batch: int = 16
    qa_lr: float = 1e-3
    qa_warmup: int = 60
    max_length: int = 256
    doc_stride: int = 64
    max_query_length: int = 64
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    cls_steps: int = 300
    cls_batch: int = 32
    cls_lr: float = 1e-3
    cls_warmup: int = 30
    cls_max_length: int = 64
    weight_decay: float = 0.0
    eval_batch: int = 64
    # the MLM-pretrained checkpoint (when no --model is given)
    mlm_steps: int = 1500
    mlm_batch: int = 32
    mlm_seq_len: int = 128
    mlm_lr: float = 1e-3
    vocab_size: int = 8192


#: seeds per task: a classification run is short and noisy, so it gets more of them
DEFAULT_SEEDS = {"qa": [0, 1, 2], "classification": list(range(10))}

QUICK = dict(qa_steps=12, qa_warmup=2, cls_steps=12, cls_warmup=2, mlm_steps=30)
#: --quick also uses a slice of the data: this many articles (QA) and sentences (classification)
QUICK_DATA = (12, 600)


# =============================================================================================
# Data
# =============================================================================================


def build_data(folder: Path, n_articles: int = 48, n_sentences: int = 3000) -> dict[str, Path]:
    """SQuAD v2.0-format QA files and classification TSVs, deterministic (seed 0); fewer
    ``n_articles`` / ``n_sentences`` for a smoke run (a fifth of them for the dev side)."""
    paths = {"qa_train": folder / "train-v2.0.json", "qa_dev": folder / "dev-v2.0.json",
             "cls_train": folder / "train.tsv", "cls_dev": folder / "dev.tsv"}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    articles = json.loads(XQUAD.read_text(encoding="utf-8"))["data"]
    titles = sorted(a["title"] for a in articles)
    rng.shuffle(titles)
    titles = titles[:n_articles]
    articles = [a for a in articles if a["title"] in set(titles)]
    dev_titles = set(titles[: max(1, round(len(titles) * 0.2))])

    def with_unanswerable(split: list[dict]) -> list[dict]:
        out = json.loads(json.dumps(split))
        for a_index, article in enumerate(out):
            others = [q["question"] for b_index, other in enumerate(split) if b_index != a_index
                      for p in other["paragraphs"] for q in p["qas"]]
            for p_index, paragraph in enumerate(article["paragraphs"]):
                for q in paragraph["qas"]:
                    q["is_impossible"] = False
                for k in range(2):
                    paragraph["qas"].append({"id": f"neg-{a_index}-{p_index}-{k}", "question": rng.choice(others),
                                             "is_impossible": True, "answers": []})
        return out

    for key, keep in (("qa_train", lambda t: t not in dev_titles), ("qa_dev", lambda t: t in dev_titles)):
        split = with_unanswerable([a for a in articles if keep(a["title"])])
        paths[key].write_text(json.dumps({"version": "v2.0", "data": split}, ensure_ascii=False), encoding="utf-8")

    rows = []
    for file in sorted(UCI.glob("*_labelled.txt")):
        for line in file.read_text(encoding="utf-8").splitlines():
            text, _, label = line.rpartition("\t")
            if text.strip():
                rows.append((" ".join(text.split()), label.strip()))
    rng.shuffle(rows)
    rows = rows[:n_sentences]
    n_dev = len(rows) // 5
    for key, part in (("cls_dev", rows[:n_dev]), ("cls_train", rows[n_dev:])):
        paths[key].write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in part), encoding="utf-8")
    return paths


def squad_records(path: Path) -> list[dict]:
    """Flat records (id, title, context, question, answers{text, answer_start}) of a SQuAD file."""
    records = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa["answers"]
                records.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                                "question": qa["question"],
                                "answers": {"text": [a["text"] for a in answers],
                                            "answer_start": [a["answer_start"] for a in answers]}})
    return records


def tsv_records(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [{"sentence": t, "label": l} for t, _, l in (line.rpartition("\t") for line in lines)]


# =============================================================================================
# The checkpoint: a small BERT, MLM-pretrained here (transformers classes, plain loop)
# =============================================================================================


def build_checkpoint(folder: Path, data: dict[str, Path], s: Settings, threads: int) -> Path:
    wanted = {"steps": s.mlm_steps, "batch": s.mlm_batch, "seq_len": s.mlm_seq_len, "lr": s.mlm_lr, "vocab": s.vocab_size}
    if (folder / "config.json").is_file():
        built = json.loads((folder / "pretraining.json").read_text()) if (folder / "pretraining.json").is_file() else {}
        if {k: built.get(k) for k in wanted} == wanted:
            return folder
        import shutil

        print(f"{folder} was built with other settings; building it again", flush=True)
        shutil.rmtree(folder)
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    from turing_models.data.tokenizer import train_tokenizer

    torch.manual_seed(0)
    qa_train = squad_records(data["qa_train"])
    texts = list(dict.fromkeys(r["context"] for r in qa_train)) + [r["question"] for r in qa_train]
    texts += [r["sentence"] for r in tsv_records(data["cls_train"])]
    texts += [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    tokenizer = train_tokenizer(texts, kind="wordpiece", vocab_size=s.vocab_size, min_frequency=2, model_max_length=512)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    block = s.mlm_seq_len - 2
    blocks = [[tokenizer.cls_token_id, *ids[i : i + block], tokenizer.sep_token_id] for i in range(0, len(ids) - block, block)]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.mlm_lr, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-6)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, s.mlm_steps // 20), s.mlm_steps)
    rng = random.Random(0)
    order: list[int] = []
    start, losses = time.perf_counter(), []
    print(f"pretraining a BERT-tiny-shaped MLM ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(blocks)} blocks of {s.mlm_seq_len} tokens) for {s.mlm_steps} steps ...", flush=True)
    model.train()
    for step in range(s.mlm_steps):
        if len(order) < s.mlm_batch:
            order += rng.sample(range(len(blocks)), len(blocks))
        batch = collator([{"input_ids": blocks[i]} for i in order[: s.mlm_batch]])
        del order[: s.mlm_batch]
        hidden = model.bert(input_ids=batch["input_ids"]).last_hidden_state
        masked = batch["labels"] != -100  # the vocabulary projection only where a token is masked
        logits = model.cls(hidden[masked])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"][masked])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, s.mlm_steps // 6) == 0:
            print(f"  step {step + 1}: MLM loss {statistics.mean(losses[-50:]):.3f}", flush=True)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps({
        "what": "BertForMaskedLM, MLM-pretrained by benchmarks/finetune_parity.py", **wanted, "final_mlm_loss": statistics.mean(losses[-50:]),
        "minutes": (time.perf_counter() - start) / 60, "threads": threads}, indent=1))
    os.replace(tmp, folder)
    print(f"  saved {folder} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    return folder


# =============================================================================================
# Ours: recipes/finetune.py
# =============================================================================================


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_flags(out: Path, run: str, seed: int, steps: int, batch: int, lr: float, warmup: int, s: Settings) -> list[str]:
    return ["--train.output_dir", str(out), "--train.run_name", run, "--train.seed", str(seed),
            "--train.max_steps", str(steps), "--train.global_batch_size", str(batch), "--train.micro_batch_size", str(batch),
            "--train.lr", str(lr), "--train.warmup_steps", str(warmup), "--train.schedule", "linear",
            "--train.min_lr_ratio", "0.0", "--train.weight_decay", str(s.weight_decay), "--train.beta1", "0.9",
            "--train.beta2", "0.999", "--train.eps", "1e-8", "--train.grad_clip", "1.0", "--train.precision", "fp32",
            "--train.log_every", str(max(1, steps // 4)), "--train.progress", "false", "--train.tensorboard", "false",
            "--eval_batch_size", str(s.eval_batch)]


PADDED = ["--model_overrides", json.dumps({"unpad_inputs": False})]


def ours_qa(model: str, data: dict[str, Path], s: Settings, seed: int, out: Path, padded: bool = False) -> dict[str, float]:
    argv = [*(PADDED if padded else []), "--task", "qa", "--model", model, "--data", str(data["qa_train"]), "--eval_data", str(data["qa_dev"]),
            "--qa.max_length", str(s.max_length), "--qa.doc_stride", str(s.doc_stride),
            "--qa.max_query_length", str(s.max_query_length), "--qa.n_best", str(s.n_best),
            "--qa.max_answer_length", str(s.max_answer_length), "--qa.null_threshold", str(s.null_threshold),
            *_train_flags(out, f"qa-{seed}", seed, s.qa_steps, s.qa_batch, s.qa_lr, s.qa_warmup, s)]
    result = _recipe("finetune").main(argv)
    m = result["metrics"]
    nbest = json.loads((Path(result["run_dir"]) / "nbest.json").read_text(encoding="utf-8"))
    best_spans = {q: next((c["text"] for c in listing if c["text"]), "") for q, listing in nbest.items()}
    golds = {r["id"]: r["answers"]["text"] for r in squad_records(data["qa_dev"])}
    return {**{k: m[k] for k in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")},
            **span_metrics(best_spans, golds)}


def ours_classification(model: str, data: dict[str, Path], s: Settings, seed: int, out: Path,
                        padded: bool = False) -> dict[str, float]:
    argv = [*(PADDED if padded else []), "--task", "classification", "--model", model, "--data", str(data["cls_train"]), "--eval_data", str(data["cls_dev"]),
            "--classification.max_length", str(s.cls_max_length),
            *_train_flags(out, f"cls-{seed}", seed, s.cls_steps, s.cls_batch, s.cls_lr, s.cls_warmup, s)]
    m = _recipe("finetune").main(argv)["metrics"]
    return {"accuracy": 100 * m["accuracy"], "f1": 100 * m["f1"], "mcc": 100 * m["mcc"]}


# =============================================================================================
# The reference, written the way transformers' examples are
# =============================================================================================


def _training_args(out: Path, seed: int, steps: int, batch: int, lr: float, warmup: int, s: Settings):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out), seed=seed, max_steps=steps, per_device_train_batch_size=batch,
        per_device_eval_batch_size=s.eval_batch, learning_rate=lr, warmup_steps=warmup, lr_scheduler_type="linear",
        weight_decay=s.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        logging_steps=max(1, steps // 4), eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0,
    )


# ---- utils_qa.py-style postprocessing ---------------------------------------------------------


def postprocess_qa_predictions(examples, features, predictions, *, version_2_with_negative: bool, n_best_size: int,
                               max_answer_length: int, null_score_diff_threshold: float) -> tuple[dict[str, str], dict[str, str]]:
    """One answer per example from the start/end logits of its features (``utils_qa.py``'s method):
    the ``n_best_size`` best starts x ends of every feature that land in the context, at most
    ``max_answer_length`` tokens long; the null score is the smallest CLS score over the features;
    v2 answers "" when ``null - best non-null > null_score_diff_threshold``. Returns the answers
    and the best non-null span of every example."""
    all_start, all_end = predictions
    index_of = {ex_id: i for i, ex_id in enumerate(examples["id"])}
    features_of = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_of[index_of[feature["example_id"]]].append(i)
    answers, best_spans = {}, {}
    for example_index, example in enumerate(examples):
        null, candidates = None, []
        for feature_index in features_of[example_index]:
            start_logits, end_logits = all_start[feature_index], all_end[feature_index]
            offsets = features[feature_index]["offset_mapping"]
            feature_null = start_logits[0] + end_logits[0]
            if null is None or feature_null < null:
                null = feature_null
            starts = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            ends = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for si in starts:
                for ei in ends:
                    if si >= len(offsets) or ei >= len(offsets) or offsets[si] is None or offsets[ei] is None:
                        continue
                    if ei < si or ei - si + 1 > max_answer_length:
                        continue
                    candidates.append((start_logits[si] + end_logits[ei], offsets[si][0], offsets[ei][1]))
        candidates.sort(key=lambda c: c[0], reverse=True)
        candidates = candidates[:n_best_size]
        texts = [(score, example["context"][a:b]) for score, a, b in candidates]
        non_null = [(score, text) for score, text in texts if text != ""]
        if not non_null:
            answers[example["id"]] = best_spans[example["id"]] = ""
            continue
        best_score, best_text = non_null[0]
        best_spans[example["id"]] = best_text
        if version_2_with_negative and null - best_score > null_score_diff_threshold:
            answers[example["id"]] = ""
        else:
            answers[example["id"]] = best_text
    return answers, best_spans


# ---- the official SQuAD v2.0 evaluation --------------------------------------------------------


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(gold: str, pred: str) -> float:
    g, p = _normalize(gold).split(), _normalize(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_v2_metric(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    exact, f1 = {}, {}
    for qid, golds in references.items():
        golds = [g for g in golds if _normalize(g)] or [""]
        pred = predictions.get(qid, "")
        exact[qid] = max(float(_normalize(g) == _normalize(pred)) for g in golds)
        f1[qid] = max(_f1(g, pred) for g in golds)

    def mean(scores: dict[str, float], ids: list[str]) -> float:
        return 100.0 * sum(scores[q] for q in ids) / len(ids) if ids else float("nan")

    has = [q for q, g in references.items() if g]
    no = [q for q, g in references.items() if not g]
    everything = list(references)
    return {"exact": mean(exact, everything), "f1": mean(f1, everything), "HasAns_exact": mean(exact, has),
            "HasAns_f1": mean(f1, has), "NoAns_exact": mean(exact, no), "NoAns_f1": mean(f1, no)}


def span_metrics(best_spans: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """EM / F1 of the best non-null span on the answerable questions, whatever the null score
    says: the span head's quality, comparable even while the null answer wins everywhere."""
    answerable = {q: g for q, g in references.items() if g}
    m = squad_v2_metric({q: best_spans.get(q, "") for q in answerable}, answerable)
    return {"span_exact": m["exact"], "span_f1": m["f1"]}


def reference_qa(model_path: str, data: dict[str, Path], s: Settings, seed: int, out: Path) -> dict[str, float]:
    """``run_qa.py``: datasets + map preprocessing, the HF Trainer, ``utils_qa.py`` postprocessing."""
    from datasets import Dataset
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    set_seed(seed)
    raw_train, raw_eval = Dataset.from_list(squad_records(data["qa_train"])), Dataset.from_list(squad_records(data["qa_dev"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForQuestionAnswering.from_pretrained(model_path)
    pad_on_right = tokenizer.padding_side == "right"

    def tokenize(examples):
        questions = [q.lstrip() for q in examples["question"]]
        return tokenizer(
            questions if pad_on_right else examples["context"], examples["context"] if pad_on_right else questions,
            truncation="only_second" if pad_on_right else "only_first", max_length=s.max_length, stride=s.doc_stride,
            return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
        )

    def prepare_train_features(examples):
        enc = tokenize(examples)
        sample_of = enc.pop("overflow_to_sample_mapping")
        enc["start_positions"], enc["end_positions"] = [], []
        for i, offsets in enumerate(enc.pop("offset_mapping")):
            input_ids = enc["input_ids"][i]
            cls = input_ids.index(tokenizer.cls_token_id)
            seq = enc.sequence_ids(i)
            answers = examples["answers"][sample_of[i]]
            start = end = cls
            if answers["answer_start"]:
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                first = seq.index(1 if pad_on_right else 0)
                last = len(seq) - 1 - seq[::-1].index(1 if pad_on_right else 0)
                if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                    while first < len(offsets) and offsets[first][0] <= start_char:
                        first += 1
                    while offsets[last][1] >= end_char:
                        last -= 1
                    start, end = first - 1, last + 1
            enc["start_positions"].append(start)
            enc["end_positions"].append(end)
        return enc

    def prepare_validation_features(examples):
        enc = tokenize(examples)
        sample_of = enc.pop("overflow_to_sample_mapping")
        enc["example_id"] = []
        for i in range(len(enc["input_ids"])):
            seq = enc.sequence_ids(i)
            context = 1 if pad_on_right else 0
            enc["example_id"].append(examples["id"][sample_of[i]])
            enc["offset_mapping"][i] = [o if seq[k] == context else None for k, o in enumerate(enc["offset_mapping"][i])]
        return enc

    train_dataset = raw_train.map(prepare_train_features, batched=True, remove_columns=raw_train.column_names)
    eval_features = raw_eval.map(prepare_validation_features, batched=True, remove_columns=raw_eval.column_names)
    trainer = Trainer(model=model, args=_training_args(out, seed, s.qa_steps, s.qa_batch, s.qa_lr, s.qa_warmup, s),
                      train_dataset=train_dataset, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    output = trainer.predict(eval_features.remove_columns(["example_id", "offset_mapping"]))
    answers, best_spans = postprocess_qa_predictions(
        raw_eval, eval_features, output.predictions, version_2_with_negative=True, n_best_size=s.n_best,
        max_answer_length=s.max_answer_length, null_score_diff_threshold=s.null_threshold,
    )
    golds = {r["id"]: r["answers"]["text"] for r in raw_eval}
    return {**squad_v2_metric(answers, golds), **span_metrics(best_spans, golds)}


def reference_classification(model_path: str, data: dict[str, Path], s: Settings, seed: int, out: Path) -> dict[str, float]:
    """``run_glue.py``: sorted label list, datasets + map preprocessing, the HF Trainer, sklearn metrics."""
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    set_seed(seed)
    raw_train, raw_eval = Dataset.from_list(tsv_records(data["cls_train"])), Dataset.from_list(tsv_records(data["cls_dev"]))
    label_list = sorted(set(raw_train["label"]))
    label_to_id = {label: i for i, label in enumerate(label_list)}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(label_list), label2id=label_to_id, id2label={i: l for l, i in label_to_id.items()})

    def preprocess(examples):
        enc = tokenizer(examples["sentence"], padding=False, max_length=s.cls_max_length, truncation=True)
        enc["label"] = [label_to_id[label] for label in examples["label"]]
        return enc

    train_dataset = raw_train.map(preprocess, batched=True, remove_columns=["sentence"])
    eval_dataset = raw_eval.map(preprocess, batched=True, remove_columns=["sentence"])
    trainer = Trainer(model=model, args=_training_args(out, seed, s.cls_steps, s.cls_batch, s.cls_lr, s.cls_warmup, s),
                      train_dataset=train_dataset, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    output = trainer.predict(eval_dataset)
    preds = np.argmax(output.predictions, axis=1)
    labels = output.label_ids
    return {"accuracy": 100 * accuracy_score(labels, preds), "f1": 100 * f1_score(labels, preds),
            "mcc": 100 * matthews_corrcoef(labels, preds)}


# =============================================================================================
# The comparison
# =============================================================================================

SIDES = {
    "qa": (ours_qa, reference_qa, ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                                   "span_exact", "span_f1")),
    "classification": (ours_classification, reference_classification, ("accuracy", "f1", "mcc")),
}


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Keep the two libraries' logs and progress bars out of the table; shown if a run fails."""
    if verbose:
        yield
        return
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            handler = logging.StreamHandler(buffer)
            logging.getLogger().addHandler(handler)
            try:
                yield
            finally:
                logging.getLogger().removeHandler(handler)
    except BaseException:
        print(buffer.getvalue()[-5000:], file=sys.stderr)
        raise


def warm_up() -> None:
    """Import both stacks before any timing, so neither side pays the imports."""
    import datasets  # noqa: F401
    import sklearn.metrics  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import turing_models.nlu  # noqa: F401
    import turing_models.tasks.finetune  # noqa: F401
    from turing_models.training import Trainer as _  # noqa: F401


def run_one(task: str, side: str, model: str, data, s: Settings, seed: int, verbose: bool,
            ours_padded: bool = False) -> tuple[dict[str, float], float, float]:
    """(metrics, wall seconds, CPU seconds of all threads) of one side."""
    fn = SIDES[task][0 if side == "ours" else 1]
    kwargs = {"padded": True} if side == "ours" and ours_padded else {}
    with tempfile.TemporaryDirectory(prefix=f"parity-{task}-{side}-") as tmp, _quiet(verbose):
        start, cpu = time.perf_counter(), time.process_time()
        metrics = fn(model, data, s, seed, Path(tmp), **kwargs)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return metrics, seconds, cpu


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:6.2f}"
    return f"{statistics.mean(values):6.2f} ± {statistics.stdev(values):4.2f}"


def report(task: str, runs: dict[str, list[tuple[dict[str, float], float, float]]], seeds: list[int]) -> dict[str, Any]:
    keys = SIDES[task][2]
    print(f"\n{task}: mean over seeds {seeds}" + (" (± standard deviation)" if len(seeds) > 1 else ""))
    width = 17
    print(f"  {'':<10}" + "".join(f"{k:>{width}}" for k in (*keys, "wall s", "CPU s")))
    summary: dict[str, Any] = {}
    for side in ("ours", "reference"):
        metrics = [m for m, _, _ in runs[side]]
        cells = [_mean_std([m[k] for m in metrics]) for k in keys]
        cells += [_mean_std([t for _, t, _ in runs[side]]), _mean_std([c for _, _, c in runs[side]])]
        print(f"  {side:<10}" + "".join(f"{c:>{width}}" for c in cells))
        summary[side] = {k: statistics.mean(m[k] for m in metrics) for k in keys}
        summary[side]["wall_s"] = statistics.mean(t for _, t, _ in runs[side])
        summary[side]["cpu_s"] = statistics.mean(c for _, _, c in runs[side])
        summary[side]["per_seed"] = [{**m, "wall_s": t, "cpu_s": c} for m, t, c in runs[side]]
    per_seed = [o[0]["f1"] - r[0]["f1"] for o, r in zip(runs["ours"], runs["reference"])]
    delta = statistics.mean(per_seed)
    # the two sides draw independently (same seed numbers, different random streams): unpaired
    stderr = (math.sqrt(sum(statistics.variance([m["f1"] for m, _, _ in runs[side]]) for side in runs) / len(seeds))
              if len(seeds) > 1 else float("nan"))
    wall = summary["ours"]["wall_s"] / summary["reference"]["wall_s"]
    cpu = summary["ours"]["cpu_s"] / summary["reference"]["cpu_s"]
    print(f"  F1 ours - reference: {delta:+.2f} ± {stderr:.2f} (standard error) points "
          f"(per seed {', '.join(f'{d:+.2f}' for d in per_seed)}); "
          f"time ours / reference: {wall:.2f}x wall, {cpu:.2f}x CPU")
    print(f"  goal |dF1| <= 1 point: {'met' if abs(delta) <= 1.0 else 'NOT met'}; "
          f"time <= 1.0x: {'met' if max(wall, cpu) <= 1.0 else 'NOT met'}")
    summary.update(delta_f1=delta, delta_f1_stderr=stderr, delta_f1_per_seed=per_seed, wall_ratio=wall, cpu_ratio=cpu)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, a few steps, a barely pretrained model")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="for every task; default: QA 0 1 2, classification 0-9 (--quick: 0)")
    parser.add_argument("--tasks", nargs="+", choices=list(SIDES), default=list(SIDES))
    parser.add_argument("--model", default=None, help="a BERT / RoBERTa folder or Hub id (default: the MLM-pretrained one built here)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the data and the checkpoint are built once")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2),
                        help="torch threads on both sides (default: min(cores, 2))")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--ours-padded", action="store_true",
                        help="run ours with model_overrides unpad_inputs=false (padded attention; faster on CPU)")
    parser.add_argument("--verbose", action="store_true", help="show both libraries' own logs")
    args = parser.parse_args(argv)

    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both sides on the CPU
    import torch

    torch.set_num_threads(args.threads)
    s = Settings(**QUICK) if args.quick else Settings()
    task_seeds = {task: args.seeds or ([0] if args.quick else DEFAULT_SEEDS[task]) for task in args.tasks}
    data = build_data(args.cache / "data-quick", *QUICK_DATA) if args.quick else build_data(args.cache / "data")
    if args.model:
        model = args.model
    else:
        name = "bert-mlm-quick" if args.quick else "bert-mlm"
        model = str(build_checkpoint(args.cache / name, data, s, args.threads))
    print(f"model {model}; seeds {task_seeds}; {args.threads} threads; settings {json.dumps(asdict(s))}", flush=True)
    results: dict[str, Any] = {"model": model, "seeds": task_seeds, "threads": args.threads, "settings": asdict(s),
                               "ours_padded": args.ours_padded}
    warm_up()
    start = time.perf_counter()
    for task in args.tasks:
        runs: dict[str, list] = {"ours": [], "reference": []}
        seeds = task_seeds[task]
        for n, seed in enumerate(seeds):
            order = ("ours", "reference") if n % 2 == 0 else ("reference", "ours")  # alternate: load drifts
            for side in order:
                metrics, seconds, cpu = run_one(task, side, model, data, s, seed, args.verbose, args.ours_padded)
                runs[side].append((metrics, seconds, cpu))
                print(f"  {task} seed {seed} {side:<9}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
                      + f"  ({seconds:.1f} s wall, {cpu:.1f} s CPU)", flush=True)
        results[task] = report(task, runs, seeds)
    results["total_minutes"] = (time.perf_counter() - start) / 60
    print(f"\ntotal {results['total_minutes']:.1f} min")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
