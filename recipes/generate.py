#!/usr/bin/env python
"""Generate text from a TuringNLG or GPT-2-family checkpoint, streaming tokens as they are produced.

MODEL is a checkpoint folder (save_pretrained output, e.g. checkpoints/runs/<run>/final) or a
Hugging Face Hub id. TuringNLG checkpoints load natively; GPT-2-family ones (model_type "gpt2",
e.g. openai-community/gpt2) are converted on load. The tokenizer is the one saved beside the
weights; a folder without one falls back to the built-in GPT-2 BPE.

The prompt is PROMPT, or standard input when PROMPT is omitted or "-".

Examples:
  python recipes/generate.py checkpoints/runs/nlg-tiny/final "Once upon a time"
  echo "The meaning of life is" | python recipes/generate.py openai-community/gpt2 --top-p 0.9
  python recipes/generate.py openai-community/gpt2 "Hello" --greedy --max-new-tokens 20

Errors (unknown checkpoint, wrong model_type, bad tensor shapes, missing weights, a prompt longer
than the context, bad flags) print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

from turing_models.errors import UsageError, cli_main
from turing_models.training.config import parse_config, positional


@dataclass
class GenerateArgs:
    """Generate text from a TuringNLG or GPT-2-family checkpoint."""

    model: str = field(default="", metadata=positional(
        "checkpoint folder or Hub id (TuringNLG, or GPT-2 family: converted on load)"))
    prompt: Optional[str] = field(default=None, metadata=positional(
        'the prompt; omitted or "-": read standard input', optional=True))
    max_new_tokens: int = 64
    """Tokens to generate at most."""
    greedy: bool = False
    """Greedy decoding (ignores the sampling flags)."""
    temperature: float = 0.8
    """Sampling temperature > 0."""
    top_k: int = 50
    """Sample from the k most likely tokens; 0 = off."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    num_beams: int = 1
    """Beam search with this many beams (1 = off)."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeats."""
    seed: Optional[int] = None
    """Random seed for reproducible sampling."""
    device: Optional[str] = None
    """cpu, cuda, cuda:1 ... (default: cuda when available)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype (auto: as stored)."""
    tokenizer: Optional[str] = None
    """Tokenizer folder or Hub id (default: the model's, else GPT-2 BPE)."""
    no_stream: bool = False
    """Print the completion at the end instead of streaming."""


def check_local_path(model: str) -> None:
    from turing_models.layers.state_dict_adapter import check_local_path as check

    check(model)


def check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be at least 1.")
    if not args.temperature > 0:
        raise UsageError(f"--temperature {args.temperature} must be > 0 (use --greedy for deterministic output).")
    if args.top_k < 0:
        raise UsageError(f"--top-k {args.top_k} must be >= 0 (0 turns it off).")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p} must be in (0, 1].")
    if args.num_beams < 1:
        raise UsageError(f"--num-beams {args.num_beams} must be at least 1.")
    if not args.repetition_penalty > 0:
        raise UsageError(f"--repetition-penalty {args.repetition_penalty} must be > 0.")


def load_tokenizer(model_source: str, tokenizer_source: str | None):
    """The tokenizer saved with the model; else the built-in GPT-2 BPE of turing_models.data."""
    from transformers import AutoTokenizer

    if tokenizer_source is not None:
        try:
            return AutoTokenizer.from_pretrained(tokenizer_source)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the tokenizer {tokenizer_source!r}: {' '.join(str(exc).split())[:300]}") from None
    try:
        return AutoTokenizer.from_pretrained(model_source)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from turing_models.data import load_tokenizer as builtin
    except ImportError:
        builtin = None
    if builtin is None:
        raise UsageError(
            f"{model_source!r} has no tokenizer and the built-in GPT-2 BPE is not available; pass --tokenizer."
        )
    return builtin("gpt2-bpe")


def read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass it as an argument or on standard input.")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty.")
    return prompt


@cli_main
def main(argv=None) -> int:
    args = parse_config(GenerateArgs, argv, prog="generate.py", description=__doc__)
    check_args(args)
    check_local_path(args.model)  # before the slow imports
    prompt = read_prompt(args.prompt)

    import torch
    import transformers
    from transformers import TextStreamer

    transformers.logging.set_verbosity_error()  # errors are ours to report, in one line
    transformers.utils.logging.disable_progress_bar()

    from turing_models.nlg import TuringNLG

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = TuringNLG.from_pretrained(args.model, dtype=dtype)
    try:
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"cannot use --device {device}: {exc}") from None
    tokenizer = load_tokenizer(args.model, args.tokenizer)

    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    context = model.config.max_position_embeddings
    if ids.shape[1] >= context:
        raise UsageError(
            f"the prompt is {ids.shape[1]} tokens, longer than the model's context of {context} tokens "
            "(with room for one new token); shorten the prompt."
        )
    max_new = args.max_new_tokens
    if ids.shape[1] + max_new > context:
        max_new = context - ids.shape[1]
        print(f"note: generating {max_new} tokens, not {args.max_new_tokens}: the context is {context} tokens "
              f"and the prompt {ids.shape[1]}.", file=sys.stderr)
    if args.seed is not None:
        torch.manual_seed(args.seed)

    gen = dict(max_new_tokens=max_new, num_beams=args.num_beams,
               repetition_penalty=args.repetition_penalty)
    if args.greedy:
        gen["do_sample"] = False
    else:
        gen.update(do_sample=True, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen["pad_token_id"] = pad if pad is not None else 0
    streamer = None
    if not args.no_stream and args.num_beams == 1:  # a streamer cannot follow several beams
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    sys.stdout.write(prompt)
    sys.stdout.flush()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=enc.get("attention_mask", torch.ones_like(ids)).to(device),
                             streamer=streamer, **gen)
    if streamer is None:
        print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
