"""Which vocabulary a directory holds, and loading it: GPT-2's byte-level BPE (`encoder.json` +
`vocab.bpe`, `bpe.py`) or a SentencePiece model (`sp.model`, `sentencepiece.py`). Both loaders
give an object with `encode`, `decode`, `decode_bytes`, `n_vocab` and `eot_token`."""

from __future__ import annotations

import functools
import os

from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer.bpe import VOCAB_FILES, bpe_files, load_bpe
from gpt2_tf2.tokenizer.sentencepiece import SP_MODEL, SentencePieceEncoder

KINDS = {"bpe": VOCAB_FILES, "sentencepiece": (SP_MODEL,)}


def vocabulary_kind(directory: str) -> str:
    """'bpe' or 'sentencepiece', by the files present; one clear error when neither is whole."""
    has = {name for names in KINDS.values() for name in names}
    has = {name for name in has if os.path.isfile(os.path.join(directory, name))}
    if SP_MODEL in has:
        if has & set(VOCAB_FILES):
            raise UserError(
                f"{directory}: holds both {SP_MODEL} and {'/'.join(VOCAB_FILES)}; keep the one "
                f"vocabulary the model was trained with"
            )
        return "sentencepiece"
    if has:
        return "bpe"  # a missing half is named by the BPE reader
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such directory")
    raise UserError(
        f"{directory}: no vocabulary (encoder.json + vocab.bpe, or {SP_MODEL}); build one with "
        f"python -m gpt2_tf2.vocab train CORPUS --out DIR"
    )


def vocabulary_files(directory: str) -> dict[str, str]:
    """The vocabulary's files by name: what a copy of the model (a run directory, an export,
    a new model from `init`) must carry beside its weights."""
    if vocabulary_kind(directory) == "sentencepiece":
        return {SP_MODEL: os.path.join(directory, SP_MODEL)}
    return bpe_files(directory)


def load_encoder(directory: str, fast: bool = True):
    """The encoder of a directory's vocabulary, whichever kind it is."""
    if vocabulary_kind(directory) == "sentencepiece":
        path = os.path.join(directory, SP_MODEL)
        st = os.stat(path)
        return _load_sentencepiece(path, st.st_size, st.st_mtime_ns)
    return load_bpe(directory, fast)


@functools.lru_cache(maxsize=4)
def _load_sentencepiece(path: str, size: int, mtime: int) -> SentencePieceEncoder:
    with open(path, "rb") as f:
        return SentencePieceEncoder(f.read(), source=path)


def get_encoder(model_name: str, models_dir: str = "models"):
    """The original API: the encoder of `models_dir/model_name`."""
    return load_encoder(os.path.join(models_dir, model_name))
