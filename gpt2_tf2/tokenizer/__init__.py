"""Tokenizers: text <-> token ids. Today GPT-2's byte-level BPE (`bpe.py`, the original API);
a model directory's vocabulary files are named here, so other kinds can sit beside it."""

from gpt2_tf2.tokenizer.bpe import (
    ENDOFTEXT,
    VOCAB_FILES,
    Encoder,
    get_encoder,
    load_encoder,
    vocabulary_files,
)

__all__ = ["ENDOFTEXT", "VOCAB_FILES", "Encoder", "get_encoder", "load_encoder", "vocabulary_files"]
