"""Tokenizers: the built-in ones, loading by name, and training new ones.

Every tokenizer here is a ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``, backed by
the Rust ``tokenizers`` library), saved as an ordinary ``save_pretrained`` folder, so it loads with
``AutoTokenizer.from_pretrained(folder)`` anywhere.

Built-in tokenizers are folders under ``turing_models/data/builtin_tokenizers/``; ``gpt2-bpe`` is
the real GPT-2 byte-level BPE (50257 tokens), the vocabulary of Turing-NLG.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Literal

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..errors import UsageError

BUILTIN_TOKENIZERS_DIR = Path(__file__).parent / "builtin_tokenizers"

TokenizerKind = Literal["bpe", "unigram", "sentencepiece", "wordpiece"]
TOKENIZER_KINDS: tuple[str, ...] = ("bpe", "unigram", "sentencepiece", "wordpiece")


def builtin_tokenizers() -> list[str]:
    """Names of the tokenizers shipped with the package (folder names)."""
    if not BUILTIN_TOKENIZERS_DIR.is_dir():
        return []
    return sorted(
        p.name for p in BUILTIN_TOKENIZERS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer by built-in name, local folder or Hugging Face Hub id.

    Resolution order: a built-in name (``"gpt2-bpe"``, see :func:`builtin_tokenizers`), then a
    local folder written by ``save_pretrained`` (or by ``prepare_data.py tokenizer``), then a Hub
    id. Offline or unknown names raise :class:`UsageError` with one line saying what to do.
    """
    if isinstance(name_or_path, PreTrainedTokenizerFast):  # already loaded: pass through
        return name_or_path
    name = os.fspath(name_or_path)
    builtin = BUILTIN_TOKENIZERS_DIR / name
    if name in builtin_tokenizers():
        source = str(builtin)
    elif os.path.isdir(os.path.expanduser(name)):
        source = os.path.expanduser(name)
    elif os.path.exists(os.path.expanduser(name)):
        raise UsageError(
            f"tokenizer path {name!r} is a file; pass the folder that holds tokenizer.json "
            "(as written by save_pretrained or prepare_data.py tokenizer)"
        )
    elif not _looks_like_hub_id(name):
        raise UsageError(
            f"tokenizer folder {name!r} does not exist; pass an existing folder, a built-in name "
            f"({', '.join(builtin_tokenizers()) or 'none installed'}) or a Hub id"
        )
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set: download it first or pass a local folder)" if offline else ""
        raise UsageError(
            f"tokenizer {name!r} is not a built-in name or a local folder, and loading it from the "
            f"Hub failed{hint}; built-in names are "
            f"{', '.join(builtin_tokenizers())}; cause: {' '.join(str(exc).split())[:300]}"
        ) from None
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise UsageError(
            f"tokenizer {name!r} has no fast (Rust) implementation; save it with tokenizer.json "
            "(for example load it once in transformers and call save_pretrained)"
        )
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast, serialized: str | None = None) -> str:
    """sha256 of everything that decides the token ids: the serialized Rust tokenizer + specials.

    ``serialized`` may pass ``tokenizer.backend_tokenizer.to_str()`` when already at hand."""
    h = hashlib.sha256()
    h.update((serialized if serialized is not None else tokenizer.backend_tokenizer.to_str()).encode())
    h.update(repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

# Special tokens of each family, in id order (ids 0, 1, ...). The byte-level BPE uses GPT-2's
# single <|endoftext|>; the encoder vocabularies follow XLM-R (unigram) and BERT (wordpiece).
_SPECIALS = {
    "bpe": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "unigram": {
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>",
    },
    "wordpiece": {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
}
_SPECIALS["sentencepiece"] = _SPECIALS["unigram"]
_SPECIAL_ORDER = {
    "bpe": ["<|endoftext|>"],
    "sentencepiece": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "unigram": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}


def _build_backend(kind: str, vocab_size: int, min_frequency: int, lowercase: bool):
    """An untrained ``tokenizers.Tokenizer`` and its trainer for ``kind``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = _SPECIAL_ORDER[kind]
    if kind == "bpe":  # GPT-2's recipe: bytes as the alphabet, no unknown token possible
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    elif kind == "unigram":  # SentencePiece unigram: "▁" marks the start of a word
        tok = _with_metaspace(Tokenizer(models.Unigram()), lowercase)
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False,
        )
    elif kind == "wordpiece":  # BERT: "##" marks a word's continuation pieces
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            continuing_subword_prefix="##", show_progress=False,
        )
    else:
        raise UsageError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    return tok, trainer


def _with_metaspace(tok, lowercase: bool):
    """``tok`` with SentencePiece's conventions: NFKC, runs of spaces collapsed, ``▁`` words,
    ``<s> ... </s>`` around each sequence."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    norms = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    if lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return tok


def _metaspace_tokenizer(vocab: list[tuple[str, float]], unk_id: int, lowercase: bool):
    """A fast Unigram tokenizer over a SentencePiece vocabulary, with its conventions."""
    from tokenizers import Tokenizer, models

    return _with_metaspace(Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False)), lowercase)


def _train_sentencepiece(texts: Iterable[str], vocab_size: int, lowercase: bool) -> tuple[object, bytes, int]:
    """Train with the ``sentencepiece`` library (unigram) and convert to a fast tokenizer.

    The conversion is exact for single lines: SentencePiece is trained with plain NFKC and its
    default whitespace handling, which the fast tokenizer's normalizer reproduces. Returns the
    Rust tokenizer, the SentencePiece model (bytes) and the number of lines seen."""
    import io

    import sentencepiece as spm

    lines = [0]

    def sentences():
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    lines[0] += 1
                    yield line.lower() if lowercase else line

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            normalization_rule_name="nfkc", character_coverage=1.0, hard_vocab_limit=False,
            bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"], minloglevel=2,
        )
    except RuntimeError as exc:
        if lines[0] == 0:
            raise UsageError("no text to train the tokenizer on: the inputs hold no non-empty documents") from None
        raise UsageError(f"SentencePiece training failed: {' '.join(str(exc).split())[:300]}") from None
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return _metaspace_tokenizer(vocab, sp.unk_id(), lowercase), model.getvalue(), lines[0]


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: TokenizerKind = "bpe",
    vocab_size: int = 32000,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    model_max_length: int = 1024,
    output_dir: str | os.PathLike | None = None,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on an iterable of texts (documents or lines).

    ``kind``: ``"bpe"`` (GPT-2-style byte-level BPE), ``"unigram"`` (the unigram algorithm of
    SentencePiece as implemented in ``tokenizers``: ``▁`` word starts, XLM-R special tokens),
    ``"sentencepiece"`` (the same trained by the ``sentencepiece`` library itself, line by line,
    converted exactly; ``spm.model`` is saved alongside) or ``"wordpiece"`` (BERT, ``##``
    continuations).
    ``lowercase`` defaults to True for wordpiece and False otherwise. With ``output_dir`` the
    result is saved there (atomically) as a ``save_pretrained`` folder.
    """
    if kind not in TOKENIZER_KINDS:
        raise UsageError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    if vocab_size < len(_SPECIAL_ORDER[kind]) + (256 if kind == "bpe" else 1):
        raise UsageError(f"vocab_size {vocab_size} is too small for a {kind} tokenizer; use at least 300")
    if lowercase is None:
        lowercase = kind == "wordpiece"
    extra: dict[str, bytes] = {}
    if kind == "sentencepiece":
        backend, extra["spm.model"], _ = _train_sentencepiece(texts, vocab_size, lowercase)
    else:
        backend, trainer = _build_backend(kind, vocab_size, min_frequency, lowercase)
        seen = [0]

        def counted(it: Iterable[str]):
            for text in it:
                if text:
                    seen[0] += 1
                    yield text

        backend.train_from_iterator(counted(texts), trainer=trainer)
        if seen[0] == 0:
            raise UsageError("no text to train the tokenizer on: the inputs hold no non-empty documents")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, **_SPECIALS[kind]
    )
    if kind == "bpe":
        tokenizer.add_prefix_space = False
    if output_dir is not None:
        save_tokenizer(tokenizer, output_dir, extra_files=extra)
    return tokenizer


def save_tokenizer(
    tokenizer: PreTrainedTokenizerFast, output_dir: str | os.PathLike, extra_files: dict[str, bytes] | None = None
) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then rename it to ``output_dir``."""
    from ..io import atomic_directory

    with atomic_directory(output_dir, overwrite=True) as tmp:
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return Path(output_dir)


def word_start_scheme(tokenizer: PreTrainedTokenizerFast) -> str:
    """How this tokenizer marks words: ``"wordpiece"`` (## continuations), ``"metaspace"``
    (▁ starts a word) or ``"bytelevel"`` (Ġ starts a word). Used by whole-word masking."""
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") == "WordPiece" or model.get("continuing_subword_prefix"):
        return "wordpiece"
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if "Metaspace" in text:
        return "metaspace"
    if "ByteLevel" in text:
        return "bytelevel"
    raise UsageError(
        "whole-word masking needs a WordPiece (##), SentencePiece (▁) or byte-level (Ġ) tokenizer; "
        "pass whole_word_mask=False for this one"
    )


def continuation_prefix(tokenizer: PreTrainedTokenizerFast) -> str:
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model") or {}
    return model.get("continuing_subword_prefix") or "##"


def is_continuation_table(tokenizer: PreTrainedTokenizerFast) -> list[bool]:
    """``table[id]`` is True when token ``id`` continues the word before it (never for specials)."""
    scheme = word_start_scheme(tokenizer)
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    table = [False] * size
    special = set(tokenizer.all_special_ids)
    prefix = continuation_prefix(tokenizer) if scheme == "wordpiece" else None
    for piece, idx in vocab.items():
        if idx in special:
            continue
        if scheme == "wordpiece":
            table[idx] = piece.startswith(prefix)
        elif scheme == "metaspace":
            table[idx] = not piece.startswith("▁")
        else:  # bytelevel: Ġ is a space, Ċ a newline
            table[idx] = not piece.startswith(("Ġ", "Ċ", "ĉ"))
    return table
