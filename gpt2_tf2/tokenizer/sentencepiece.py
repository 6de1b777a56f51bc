"""A SentencePiece vocabulary (`sp.model`) behind the same interface as GPT-2's BPE `Encoder`.

The alternative the forks used for other languages (lopuhin/transformer-lm): Kudo & Richardson
2018, the `sentencepiece` package's unigram or BPE model. Encoding is the package's own; decoding
maps each id to its bytes here (a `<0xNN>` byte-fallback piece is that byte, U+2581 is a space),
so that decoding a continuation alone, or token by token, concatenates exactly, as GPT-2's byte
decoding does. `<|endoftext|>` is a control symbol in the vocabularies `vocab train` writes: text
never encodes to it, and it separates documents as in GPT-2; a model without it ends texts with
its `</s>`.
"""

from __future__ import annotations

import re

from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer.bpe import encode_with_specials

SP_MODEL = "sp.model"  # in a model directory, instead of encoder.json + vocab.bpe
ENDOFTEXT = "<|endoftext|>"
SPACE = "\u2581"  # '▁', SentencePiece's visible space
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class SentencePieceEncoder:
    """`encode`, `encode_ordinary`, `decode`, `decode_bytes`, `n_vocab`, `eot_token` and
    `special_tokens` as `bpe.Encoder` has them, over a SentencePiece model."""

    def __init__(self, model_proto: bytes, errors: str = "replace", source: str = SP_MODEL):
        try:
            import sentencepiece
        except ImportError:
            raise UserError(
                f"{source}: a SentencePiece vocabulary needs the sentencepiece package: "
                f"pip install 'gpt2_tf2[vocab]'"
            ) from None
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise UserError(f"{source}: not a SentencePiece model ({e})") from None
        self.errors = errors
        n = self.sp.GetPieceSize()
        self._bytes = [self._piece_bytes(i) for i in range(n)]
        eot = self.sp.PieceToId(ENDOFTEXT)
        has_eot = self.sp.IdToPiece(eot) == ENDOFTEXT
        self.special_tokens = {ENDOFTEXT: eot} if has_eot else {}
        eos = self.sp.eos_id()
        self.eot_token = eot if has_eot else (eos if eos >= 0 else None)

    def _piece_bytes(self, i: int) -> bytes:
        piece = self.sp.IdToPiece(i)
        if self.sp.IsByte(i):
            return bytes([int(_BYTE_PIECE.match(piece).group(1), 16)])
        if self.sp.IsControl(i):
            return piece.encode("utf-8") if piece == ENDOFTEXT else b""
        if self.sp.IsUnknown(i):
            return " \u2047 ".encode()  # what sentencepiece itself decodes <unk> to
        return piece.replace(SPACE, " ").encode("utf-8")

    @property
    def n_vocab(self) -> int:
        return len(self._bytes)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text; special-token spellings are plain text."""
        return self.sp.EncodeAsIds(text)

    def encode(self, text: str, allowed_special: set[str] | str = ()) -> list[int]:
        """Encode text; spellings of `allowed_special` tokens ("all": every one) become their id."""
        return encode_with_specials(self, text, allowed_special)

    def decode_bytes(self, tokens) -> bytes:
        return b"".join(self._bytes[int(t)] for t in tokens)

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors=self.errors)
