#!/usr/bin/env python
"""Write the notebooks of this folder (outputs stripped) from the cell sources below.

    python notebooks/build_notebooks.py          # rewrite 01_quickstart.ipynb ... 04_kernels.ipynb
    python notebooks/build_notebooks.py --check  # exit 1 when a notebook differs from its source here

Every notebook reads its sizes from environment variables with defaults that finish in a few
minutes on a laptop CPU; the test suite (tests/hub/test_notebooks.py) runs them with smaller
values through ``TURING_NOTEBOOK_*`` variables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os, sys
from pathlib import Path

# the repository root, whether the notebook runs from notebooks/ or from the root
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

NOTEBOOKS["01_quickstart"] = [
    ("md", """\
# Quickstart: load, count, build 17B on the meta device, generate

TuringNLG (GPT-style decoders) and TuringNLU (BERT/ELECTRA-style encoders) are ordinary Hugging
Face models: importing `turing_models` registers them with the `Auto` classes and `pipeline`."""),
    ("code", SETUP + '''
# A checkpoint folder to load; default: the tiny model `make demo` trains. Without one, a
# randomly initialised tiny model is saved first (its text is noise, the API is the same).
MODEL = os.environ.get("TURING_NOTEBOOK_MODEL", str(ROOT / "checkpoints/runs/nlg-tiny/final"))'''),
    ("code", '''\
import tempfile

import torch
import turing_models
from turing_models import zoo
from turing_models.data import load_tokenizer
from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM, nlg_num_parameters

if not (Path(MODEL) / "config.json").is_file():
    MODEL = tempfile.mkdtemp(prefix="turing-quickstart-")
    torch.manual_seed(0)
    TuringNLGForCausalLM(TuringNLGConfig.from_name("tiny")).save_pretrained(MODEL)
    load_tokenizer("gpt2-bpe").save_pretrained(MODEL)
    print("no trained checkpoint found: saved a random tiny TuringNLG to", MODEL)'''),
    ("md", "## Load with transformers' Auto classes and count parameters"),
    ("code", '''\
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(MODEL)
tokenizer = AutoTokenizer.from_pretrained(MODEL)
n = sum(p.numel() for p in model.parameters())
print(type(model).__name__, f"{n / 1e6:.1f} M parameters")
assert n == nlg_num_parameters(model.config)  # the closed form the zoo table uses'''),
    ("md", "## The zoo, and Turing-NLG 17B built on the meta device (no memory allocated)"),
    ("code", '''\
print(zoo.markdown_table("nlg"))

with torch.device("meta"):
    big = TuringNLGForCausalLM(TuringNLGConfig.from_name("17b"))
params = sum(p.numel() for p in big.parameters())
c = big.config
print(f"\\nTuring-NLG 17B: {params / 1e9:.2f} B parameters, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
      f"{c.num_attention_heads} heads of dim {c.head_dim}; bf16 weights alone: {params * 2 / 2**30:.0f} GiB")
assert all(p.is_meta for p in big.parameters())'''),
    ("md", "## Generate"),
    ("code", '''\
from transformers import pipeline

generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
torch.manual_seed(0)
out = generator("ROMEO:", max_new_tokens=int(os.environ.get("TURING_NOTEBOOK_NEW_TOKENS", 40)),
                do_sample=True, top_k=40, temperature=0.8, pad_token_id=tokenizer.eos_token_id)
print(out[0]["generated_text"])'''),
]

NOTEBOOKS["02_pretrain_tiny"] = [
    ("md", """\
# Pretrain a tiny TuringNLG on Shakespeare and plot the loss curve

The same recipe as `make demo` (`recipes/pretrain_nlg.py --config tiny.yaml`), called from Python
with a few overrides, then the loss curve read back from the run's `metrics.jsonl`."""),
    ("code", SETUP + '''
STEPS = int(os.environ.get("TURING_NOTEBOOK_STEPS", 150))
SEQ_LEN = int(os.environ.get("TURING_NOTEBOOK_SEQ_LEN", 128))
CORPUS_CHARS = int(os.environ.get("TURING_NOTEBOOK_CORPUS_CHARS", 0))  # 0: the whole corpus
OUT = Path(os.environ.get("TURING_NOTEBOOK_OUT", ROOT / "checkpoints" / "runs"))
CACHE = Path(os.environ.get("TURING_NOTEBOOK_CACHE", ROOT / "data_cache"))  # tokenized corpus'''),
    ("code", '''\
import importlib.util, json, tempfile

corpus = ROOT / "recipes/data/tinyshakespeare.txt"
if CORPUS_CHARS:
    excerpt = Path(tempfile.mkdtemp()) / "shakespeare-excerpt.txt"
    excerpt.write_text(corpus.read_text()[:CORPUS_CHARS])
    corpus = excerpt

spec = importlib.util.spec_from_file_location("pretrain_nlg", ROOT / "recipes/pretrain_nlg.py")
pretrain_nlg = sys.modules["pretrain_nlg"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pretrain_nlg)

summary = pretrain_nlg.main([
    "--config", "tiny.yaml", "--data.corpus", str(corpus), "--data.seq_len", str(SEQ_LEN),
    "--data.cache_dir", str(CACHE),
    "--train.max_steps", str(STEPS), "--train.log_every", str(max(1, STEPS // 30)),
    "--train.warmup_steps", str(max(1, STEPS // 10)), "--train.save_every_steps", "0",
    "--train.output_dir", str(OUT), "--train.run_name", "notebook-nlg-tiny",
    "--train.progress", "false", "--train.tensorboard", "false", "--train.eval_steps", "4",
])
run_dir = OUT / "notebook-nlg-tiny"
print({k: summary[k] for k in ("step", "tokens", "eval_loss", "eval_ppl")})'''),
    ("md", "## The loss curve, from `metrics.jsonl`"),
    ("code", '''\
%matplotlib inline
import matplotlib.pyplot as plt

records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
train = [r for r in records if "loss" in r]
evals = [r for r in records if "eval_loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="training loss")
steps_to_tokens = {r["step"]: r["tokens"] for r in train}
ax.scatter([steps_to_tokens.get(r["step"], train[-1]["tokens"]) for r in evals], [r["eval_loss"] for r in evals],
           color="C1", label="validation loss", zorder=3)
ax.set_xlabel("tokens seen"); ax.set_ylabel("cross-entropy (nats)"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title("TuringNLG tiny on Shakespeare")
plt.show()
print(f"first logged loss {train[0]['loss']:.2f} -> last {train[-1]['loss']:.2f} after {train[-1]['tokens']:,} tokens")
assert train[-1]["loss"] < train[0]["loss"]'''),
]

NOTEBOOKS["03_finetune_qa"] = [
    ("md", """\
# Fine-tune an encoder for extractive QA, evaluate, compare predictions with gold answers

`recipes/finetune.py --task qa` on the bundled XQuAD English set (split by article). The default
model is a tiny TuringNLU from scratch, so expect low scores: point `TURING_NOTEBOOK_QA_MODEL` at a
pretrained TuringNLU / BERT / RoBERTa folder for real numbers."""),
    ("code", SETUP + '''
STEPS = int(os.environ.get("TURING_NOTEBOOK_STEPS", 200))
MODEL = os.environ.get("TURING_NOTEBOOK_QA_MODEL", "tiny")
MAX_TRAIN = os.environ.get("TURING_NOTEBOOK_MAX_TRAIN")  # examples; unset: all
MAX_EVAL = os.environ.get("TURING_NOTEBOOK_MAX_EVAL")
BATCH = os.environ.get("TURING_NOTEBOOK_BATCH")  # unset: the recipe's 16
MAX_LENGTH = os.environ.get("TURING_NOTEBOOK_MAX_LENGTH")  # unset: the recipe's 256 tokens
OUT = Path(os.environ.get("TURING_NOTEBOOK_OUT", ROOT / "checkpoints" / "runs"))'''),
    ("code", '''\
import importlib.util, json

spec = importlib.util.spec_from_file_location("finetune", ROOT / "recipes/finetune.py")
finetune = sys.modules["finetune"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(finetune)

argv = ["--task", "qa", "--model", MODEL, "--data", str(ROOT / "recipes/data/qa/xquad.en.json"),
        "--train.max_steps", str(STEPS), "--train.log_every", str(max(1, STEPS // 10)),
        "--train.warmup_steps", str(max(1, STEPS // 10)), "--train.output_dir", str(OUT),
        "--train.run_name", "notebook-qa", "--train.progress", "false"]
if MAX_TRAIN:
    argv += ["--max_train_examples", MAX_TRAIN]
if MAX_EVAL:
    argv += ["--max_eval_examples", MAX_EVAL]
if BATCH:
    argv += ["--train.global_batch_size", BATCH, "--train.micro_batch_size", BATCH]
if MAX_LENGTH:
    argv += ["--qa.max_length", MAX_LENGTH, "--qa.doc_stride", str(int(MAX_LENGTH) // 4),
             "--qa.max_query_length", str(int(MAX_LENGTH) // 4)]
result = finetune.main(argv)
run_dir = Path(result["run_dir"])
print(json.dumps({k: v for k, v in result["metrics"].items() if not isinstance(v, dict)}, indent=1))'''),
    ("md", "## Predictions next to the gold answers"),
    ("code", '''\
from turing_models.tasks.qa import load_squad

predictions = json.loads((run_dir / "predictions.json").read_text())
examples, _ = load_squad(ROOT / "recipes/data/qa/xquad.en.json", split="validation", for_training=False)
gold = {e.id: e for e in examples}
rows = [(gold[i].question, pred, " | ".join(gold[i].answers)) for i, pred in predictions.items() if i in gold][:10]
width = 60
print(f"{'question':<{width}}  {'prediction':<30}  gold")
for question, pred, answers in rows:
    print(f"{question[:width]:<{width}}  {pred[:30]!r:<30}  {answers[:40]}")
exact = sum(p.strip().lower() in [a.strip().lower() for a in gold[i].answers] for i, p in predictions.items() if i in gold)
print(f"\\n{exact} of {len(predictions)} predictions match a gold answer exactly")
assert rows, "no predictions were written"'''),
]

NOTEBOOKS["04_kernels"] = [
    ("md", """\
# The fused kernels: correctness against the PyTorch references, and the benchmark table

Every Triton kernel of `turing_kernels` has a plain PyTorch reference (`turing_kernels.reference`).
On a CUDA GPU the kernels run natively; elsewhere Triton's interpreter (`TRITON_INTERPRET=1`,
set before Triton is imported) runs them on the CPU, slowly, in fp32: good for checking, not for
timing."""),
    ("code", SETUP + '''
import torch
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32'''),
    ("code", '''\
import turing_kernels as tk
from turing_kernels import reference as ref

print("Triton installed:", tk.triton_installed(), "| interpreter:", tk.interpreting(), "| device:", DEVICE)
torch.manual_seed(0)
results = []

def check(name, ours, expected, atol):
    err = (ours.float() - expected.float()).abs().max().item()
    results.append((name, err, atol))
    print(f"{name:<42} max |ours - reference| = {err:.2e}  (tolerance {atol:g})  {'OK' if err <= atol else 'FAIL'}")

tol = 1e-4 if DTYPE == torch.float32 else 2e-2
# attention: causal, head dim 64, and Turing-NLG's head dim 152 with a key-padding mask
for causal, head_dim in ((True, 64), (False, 152)):
    q, k, v = (torch.randn(2, 3, 48, head_dim, device=DEVICE, dtype=DTYPE) for _ in range(3))
    mask = torch.ones(2, 48, dtype=torch.bool, device=DEVICE)
    mask[1, 40:] = False
    out = tk.dense_attention(q, k, v, is_causal=causal, attn_mask=None if causal else mask[:, None, None, :])
    expected = ref.attention_ref(q, k, v, causal=causal, key_padding_mask=None if causal else mask)
    check(f"attention (causal={causal}, head dim {head_dim})", out, expected, tol)

x = torch.randn(64, 256, device=DEVICE, dtype=DTYPE)
r = torch.randn_like(x)
w, b = torch.randn(256, device=DEVICE, dtype=DTYPE), torch.randn(256, device=DEVICE, dtype=DTYPE)
y, s = tk.layer_norm(x, w, b, eps=1e-5, residual=r)
y_ref, s_ref = ref.layer_norm_ref(x, w, b, eps=1e-5, residual=r)
check("layer norm + residual", y, y_ref, tol)
check("bias + gelu (tanh)", tk.bias_gelu(x, b, approximate=True), ref.bias_gelu_ref(x, b, approximate=True), tol)

hidden = torch.randn(96, 64, device=DEVICE, dtype=DTYPE)
weight = torch.randn(1000, 64, device=DEVICE, dtype=DTYPE) * 0.1
labels = torch.randint(0, 1000, (96,), device=DEVICE)
labels[::7] = -100
check("linear cross-entropy (ignore_index)", tk.fused_linear_cross_entropy(hidden, weight, labels),
      ref.linear_cross_entropy_ref(hidden, weight, labels), tol)
assert all(err <= atol for _, err, atol in results)'''),
    ("md", "## Benchmarks (GPU): the table of `turing_kernels/BENCHMARKS.md`"),
    ("code", '''\
from IPython.display import Markdown, display

text = (ROOT / "turing_kernels/BENCHMARKS.md").read_text()
start = text.index("## What is measured")
display(Markdown(text[start:]))
print("run on a GPU: python turing_kernels/bench.py --quick")'''),
]


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding changes nothing
        nb.cells.append(cell)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name)) + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python notebooks/build_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
