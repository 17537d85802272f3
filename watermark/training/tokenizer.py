"""A byte-level CLIP tokenizer with no merges (every byte is a token), written to a folder: the
tokenizer of the bundled ``tiny-video``, whose text encoder only ever reads the empty prompt, and
of the tests' tiny random checkpoints (it also stands in for T5's, which needs a sentencepiece file).
Hand-written because a tokenizer's files are data: transformers reads them and cannot make them."""

from __future__ import annotations

import json
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b), cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def save_tokenizer(path: Path, max_length: int = 16) -> int:
    """Write the tokenizer to ``path`` (created); return the vocabulary size."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in bytes_to_unicode().values():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length,
                  pad_token="<|endoftext|>").save_pretrained(path)
    return len(vocab)
