"""Tokenizers: text <-> token ids. GPT-2's byte-level BPE (`bpe.py`, the original API) or a
SentencePiece model (`sentencepiece.py`); `vocabulary.py` tells which a directory holds and loads
it; `train.py` builds a new vocabulary from a corpus."""

from gpt2_tf2.tokenizer.bpe import ENDOFTEXT, VOCAB_FILES, Encoder
from gpt2_tf2.tokenizer.vocabulary import (
    get_encoder,
    load_encoder,
    vocabulary_files,
    vocabulary_kind,
)

__all__ = [
    "ENDOFTEXT",
    "VOCAB_FILES",
    "Encoder",
    "get_encoder",
    "load_encoder",
    "vocabulary_files",
    "vocabulary_kind",
]
