"""Training data: text files, directories, globs or .npz -> token chunks; the seeded window sampler.

Mirrors nshepperd's gpt-2 fork (`src/load_dataset.py`): files are read in sorted order and joined
into chunks of at least `combine` characters, files within a chunk separated by <|endoftext|>;
chunks are saved as `np.savez_compressed(out, *chunks)` (arrays `arr_0, arr_1, ...`), so datasets
encoded by either tool load in the other. Unlike the original, files are joined by the single
end-of-text token (50256 in GPT-2 vocabulary; the original encoded the six tokens of the spelling),
and a spelled-out `<|endoftext|>` inside a file is that token too. Windows are drawn uniformly over
all start positions that keep a window inside one chunk, from an RNG keyed by (seed, step), so the
data order is a pure function of the step and a resumed run sees exactly the batches it would have
seen.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from gpt2_tf2.errors import UserError
from gpt2_tf2.files import human_size, list_files, read_text


def load_dataset(
    encoder,
    path: str,
    combine: int = 50000,
    encoding: str = "utf-8",
    errors: str = "strict",
    progress: bool = False,
    n_vocab: int | None = None,
) -> list[np.ndarray]:
    """Token chunks (int32 arrays) from text files and/or .npz files under `path`; with
    `n_vocab`, every id is checked to be a token of a model with that many (`check_ids`)."""
    from tqdm import tqdm

    files = list_files(path)
    if not files and os.path.isdir(path):
        raise UserError(f"{path}: the directory contains no text files")
    if not files:
        raise UserError(f"{path}: no such file, directory or glob match")
    eot = encoder.eot_token
    chunks: list[np.ndarray] = []
    pending: list[int] = []
    pending_chars = 0
    total_bytes = sum(os.path.getsize(f) for f in files)
    with tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="encoding",
        disable=not progress,
        leave=False,
    ) as bar:
        for name in files:
            bar.set_postfix_str(os.path.basename(name)[-30:])
            if name.endswith(".npz"):
                chunks += load_npz(name, n_vocab)
            else:
                text = read_text(name, encoding, errors)
                if text:
                    if pending:
                        pending.append(eot)  # files are joined by the one end-of-text token
                    pending += encoder.encode(text, allowed_special="all")  # <|endoftext|>, if any
                    pending_chars += len(text)
                if pending_chars >= combine:
                    chunks.append(np.asarray(pending, np.int32))
                    pending, pending_chars = [], 0
            bar.update(os.path.getsize(name))
    if pending:
        chunks.append(np.asarray(pending, np.int32))
    if n_vocab is not None:  # the vocabulary's own ids: past n_vocab only if the model is smaller
        for c in chunks:
            check_ids(c, n_vocab, path)
    chunks = [c for c in chunks if c.size]
    if not chunks:
        raise UserError(f"{path}: no text found (all files are empty)")
    return chunks


def load_npz(path: str, n_vocab: int | None = None) -> list[np.ndarray]:
    """nshepperd's .npz chunks; with `n_vocab`, checked to hold only ids below it."""
    try:
        with np.load(path) as npz:
            arrays = [npz[name] for name in npz.files]
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise UserError(
                    f"{path}: not an .npz archive (a text file named .npz?); rename it to .txt "
                    f"to train on its text, or encode it with gpt2_tf2.encode"
                ) from None
        raise UserError(f"{path}: not a readable .npz dataset ({e})") from None
    for a in arrays:
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"{path}: expected 1-D integer token arrays, found {a.dtype} {a.shape}")
        if n_vocab is not None:
            check_ids(a, n_vocab, path)
    return [a.astype(np.int32, copy=False) for a in arrays]


def check_ids(tokens: np.ndarray, n_vocab: int, where: str) -> None:
    """Every id a token of the model's vocabulary (0..n_vocab-1). An id outside it (data encoded
    with another vocabulary) would index past the embedding matrix: on the CPU's compiled step
    that is no error but NaN weights, which the run would then save over its good checkpoints."""
    bad = np.flatnonzero((tokens < 0) | (tokens >= n_vocab))
    if bad.size:
        raise UserError(
            f"{where}: token id {int(tokens[bad[0]])} is outside the model's vocabulary of "
            f"{n_vocab} (ids 0..{n_vocab - 1}); was it encoded with another vocabulary? Encode "
            f"the text again with this model's (gpt2_tf2.encode --model_name)"
        )


def save_npz(chunks: list[np.ndarray], out: str) -> None:
    """nshepperd's format, written to a temporary file and renamed into place; on failure
    (a full disk) the temporary file is removed and `out` is as it was."""
    if os.path.isdir(out):
        raise UserError(f"{out}: is a directory; name the .npz file to write")
    tmp = out + ".tmp.npz"  # np.savez appends .npz to names without it
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.savez_compressed(tmp, *chunks)
        os.replace(tmp, out)
    except OSError as e:
        needed = f"; up to {human_size(sum(c.nbytes for c in chunks))} needed"
        full = e.errno == errno.ENOSPC
        raise UserError(
            f"{out}: cannot write ({e.strerror or e}){needed if full else ''}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Sampler:
    """Windows of `length` tokens, uniform over start positions that stay inside one chunk.

    `batch(step, n)` is a pure function of (seed, step): the sampler has no state to lose.
    """

    def __init__(self, chunks: list[np.ndarray], length: int, seed: int = 0):
        self.chunks, self.length, self.seed = chunks, length, int(seed)
        starts = np.array([max(0, len(c) - length + 1) for c in chunks], np.int64)
        if starts.sum() == 0:
            longest = max(len(c) for c in chunks)
            raise UserError(
                f"the dataset's longest chunk has {longest} tokens, fewer than one "
                f"window of {length}; use more text, a larger `combine`, or a smaller "
                f"`sequence_length`"
            )
        self.cumulative = np.cumsum(starts)

    def window(self, r: int) -> np.ndarray:
        i = int(np.searchsorted(self.cumulative, r, side="right"))
        offset = r - (self.cumulative[i - 1] if i else 0)
        return self.chunks[i][offset : offset + self.length]

    def batch(self, step: int, n: int) -> np.ndarray:
        """[n, length] int32 windows for global step `step`."""
        rng = np.random.default_rng([self.seed, int(step)])
        picks = rng.integers(0, self.cumulative[-1], size=n)
        return np.stack([self.window(int(r)) for r in picks]).astype(np.int32)


def split_validation(chunks: list[np.ndarray], length: int, fraction: float = 0.05):
    """Hold out the last `fraction` of the tokens (at least one window) for validation."""
    total = sum(len(c) for c in chunks)
    want = max(length + 1, int(total * fraction))
    if total - want < length:
        raise UserError(
            f"the dataset ({total} tokens) is too small to hold out a validation "
            f"split of {want}; pass `val_dataset` or use `val_every` 0"
        )
    train, val, need = list(chunks), [], want
    while need > 0:
        last = train.pop()
        if len(last) <= need:
            val.insert(0, last)
            need -= len(last)
        else:
            train.append(last[:-need])
            val.insert(0, last[-need:])
            need = 0
    return train, val


class Batches:
    """The training batches of a run, as an iterator from any step: step s gives the windows
    `sampler.batch(s, batch_size * accumulate)` as [accumulate, batch_size, length], so a resumed
    run reads exactly what it would have read. A strategy splits each batch across replicas."""

    def __init__(self, sampler: Sampler, batch_size: int, accumulate: int = 1):
        self.sampler, self.batch_size, self.accumulate = sampler, batch_size, accumulate

    def at(self, step: int) -> np.ndarray:
        windows = self.sampler.batch(step, self.batch_size * self.accumulate)
        return windows.reshape(self.accumulate, self.batch_size, self.sampler.length)

    def iterate(self, start: int):
        step = start
        while True:
            yield self.at(step)
            step += 1
