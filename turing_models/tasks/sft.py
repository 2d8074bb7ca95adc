"""Supervised (generative) fine-tuning of a decoder: prompt -> completion.

* **data**: :func:`load_sft` reads prompt/completion pairs from JSONL/JSON records
  (``prompt`` + ``completion``, or ``instruction`` [+ ``input``] + ``output``/``response``), or
  turns SQuAD-format QA data into "context + question -> answer" with :data:`QA_TEMPLATE`.
* **preprocessing**: :func:`prepare_features` tokenizes ``prompt + completion + EOS``; ``labels``
  are -100 on the prompt (and on padding), so the loss is on the completion tokens only. A pair
  longer than ``max_length`` loses prompt tokens from the left (the end of the prompt, which holds
  the question, is kept); the completion is never cut.
* **head**: the causal LM head of the decoder (``AutoModelForCausalLM``: TuringNLG, GPT-2).
* **metric**: greedy generation from the prompt (:func:`generate_completions`), scored with
  SQuAD exact match / F1 against the reference completion, plus the loss from the Trainer.

:class:`SFTTask` ties these together for ``recipes/finetune.py`` and ``recipes/evaluate.py``;
QA data is split by article (no article on both sides), other records by a seeded shuffle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from turing_models.errors import UsageError
from turing_models.tasks.base import DataSpec, Task
from turing_models.tasks.common import evaluating, limit, seeded_split
from turing_models.tasks.metrics import squad_evaluate

logger = logging.getLogger(__name__)

QA_TEMPLATE = "{context}\nQuestion: {question}\nAnswer:"
PROMPT_FIELDS = (("prompt", "completion"), ("instruction", "output"), ("instruction", "response"), ("question", "answer"))


@dataclass
class SFTExample:
    id: str
    prompt: str
    completion: str  # without the leading space; preprocessing adds it
    references: Optional[list[str]] = None  # every acceptable answer, for the metric
    title: str = ""  # the article of QA data (splits keep an article on one side)


def _from_record(record: dict, index: int, source: str) -> SFTExample:
    for prompt_key, completion_key in PROMPT_FIELDS:
        if prompt_key in record and completion_key in record:
            prompt = str(record[prompt_key])
            if prompt_key == "instruction" and record.get("input"):
                prompt = f"{prompt}\n{record['input']}"
            completion = str(record[completion_key]).strip()
            return SFTExample(str(record.get("id", index)), prompt, completion, [completion])
    raise UsageError(
        f"{source}: record {index + 1} has fields {sorted(record)}; sft records need prompt + completion "
        "(or instruction [+ input] + output/response, or question + answer)"
    )


def load_sft(source: str | Path, *, template: str = QA_TEMPLATE, split: str = "train", for_training: bool = True) -> list[SFTExample]:
    """Prompt/completion examples from JSONL/JSON records or SQuAD-format QA data.

    For QA data the prompt is ``template`` filled with ``context`` and ``question``; the
    completion is the first gold answer; unanswerable questions are skipped (their reference
    would be empty, which a generative model cannot emit as a span).
    """
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        records: Any = None
        try:
            if path.suffix == ".jsonl":
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        is_squad = isinstance(records, dict) and isinstance(records.get("data"), list) and records["data"] and "paragraphs" in records["data"][0]
        if not is_squad:
            if isinstance(records, dict) and isinstance(records.get("data"), list):
                records = records["data"]
            if not isinstance(records, list) or not records or not isinstance(records[0], dict):
                raise UsageError(f"{path}: expected prompt/completion records (JSON list or JSONL) or SQuAD JSON")
            if not {"context", "question"} <= set(records[0]):
                return [_from_record(r, i, str(path)) for i, r in enumerate(records)]
    from turing_models.tasks.qa import load_squad

    qa_examples, _ = load_squad(source, split=split, for_training=for_training)
    return from_qa(qa_examples, template)


def from_qa(qa_examples, template: str = QA_TEMPLATE) -> list[SFTExample]:
    """Context + question -> first gold answer (unanswerable questions are left out)."""
    out = []
    for ex in qa_examples:
        if not ex.answers:
            continue
        prompt = template.format(context=ex.context, question=ex.question.strip())
        out.append(SFTExample(ex.id, prompt, ex.answers[0].strip(), list(ex.answers), ex.title))
    if not out:
        raise UsageError("the QA data has no answerable question to fine-tune on")
    return out


def prepare_features(examples: Sequence[SFTExample], tokenizer, *, max_length: int = 512) -> list[dict[str, Any]]:
    """``input_ids`` = prompt + " " + completion + EOS; ``labels`` = -100 on the prompt."""
    if tokenizer.eos_token_id is None:
        raise UsageError("sft needs a tokenizer with an end-of-sequence token (eos_token)")
    features, truncated = [], 0
    for ex in examples:
        prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(" " + ex.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        room = max_length - len(completion_ids)
        if room < 1:
            raise UsageError(
                f"example {ex.id!r}: its completion alone has {len(completion_ids)} tokens, more than max_length {max_length}; raise max_length"
            )
        if len(prompt_ids) > room:
            prompt_ids = prompt_ids[-room:]
            truncated += 1
        features.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "attention_mask": [1] * (len(prompt_ids) + len(completion_ids)),
                "labels": [-100] * len(prompt_ids) + completion_ids,
            }
        )
    if truncated:
        logger.warning("%d of %d prompts were longer than max_length %d and lost tokens from the left", truncated, len(examples), max_length)
    return features


class SFTCollator:
    """Right-pads ``input_ids`` with the pad (or EOS) token, ``labels`` with -100."""

    def __init__(self, tokenizer, pad_to_multiple_of: Optional[int] = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = length - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_id] * pad)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
            batch["labels"].append(list(f["labels"]) + [-100] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _clean_completion(text: str) -> str:
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, max_length: int = 512
) -> list[str]:
    """Greedy completions, one prompt at a time, cut at EOS and at the first newline.

    Prompts longer than ``max_length - max_new_tokens`` keep their last tokens, as in training.
    """
    room = max(1, max_length - max_new_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    with evaluating(model) as device:
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-room:]
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad_id,
            )
            outputs.append(_clean_completion(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True)))
    return outputs


def evaluate_generations(examples: Sequence[SFTExample], generations: Sequence[str]) -> dict[str, float]:
    """SQuAD exact match / F1 of the generations against each example's references."""
    predictions = {ex.id: g for ex, g in zip(examples, generations)}
    refs = {ex.id: ex.references or [ex.completion] for ex in examples}
    return squad_evaluate(predictions, refs)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


@dataclass
class SFTOptions:
    """Generative fine-tuning settings (decoders)."""

    max_length: int = 512
    """Tokens of prompt + completion; longer prompts lose tokens from the left."""
    template: str = QA_TEMPLATE
    """Prompt built from QA data ({context}, {question})."""
    max_new_tokens: int = 32
    """Generation length for the eval metric."""
    max_generate: Optional[int] = None
    """Generate for at most this many eval examples (None: all)."""


class SFTTask(Task):
    """Generative fine-tuning: prompt -> completion, loss on the completion, EM/F1 of generations."""

    name = "sft"
    family = "decoder"
    head = "TuringNLGForCausalLM"
    default_data = "recipes/data/qa/xquad.en.json"

    def load_finetune(self, spec: DataSpec):
        if self.tokenizer.eos_token_id is None:
            raise UsageError("sft needs a tokenizer with an eos_token; pass --tokenizer")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # saved with the model: batched generation needs one
        return super().load_finetune(spec)

    def load(self, source: str, *, split: str, for_training: bool = False) -> list[SFTExample]:
        return load_sft(source, template=self.o.template, split=split, for_training=for_training)

    def split(self, examples, eval_fraction, seed):
        if examples and all(ex.title for ex in examples):  # QA data: by article
            from turing_models.tasks.qa import split_by_article

            return split_by_article(examples, eval_fraction, seed)
        return seeded_split(examples, eval_fraction, seed)

    def features(self, model, examples):
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None and self.o.max_length > context:
            raise UsageError(f"sft.max_length {self.o.max_length} exceeds the model's context of {context} tokens; lower sft.max_length")
        return prepare_features(examples, self.tokenizer, max_length=self.o.max_length)

    def collate_fn(self):
        return SFTCollator(self.tokenizer)

    def predict(self, model, examples, batch_size):
        examples = limit(examples, self.o.max_generate)
        prompts = [ex.prompt for ex in examples]
        return examples, generate_completions(model, self.tokenizer, prompts, max_new_tokens=self.o.max_new_tokens, max_length=self.o.max_length)

    def metrics(self, examples, predictions):
        examples, generations = predictions
        rows = [{"id": ex.id, "prediction": g, "references": ex.references or [ex.completion]} for ex, g in zip(examples, generations)]
        return evaluate_generations(examples, generations), {"predictions.jsonl": rows}


TASK = SFTTask
