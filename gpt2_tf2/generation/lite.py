"""Decoding on TensorFlow Lite: a converted decode step (`core.lite_step`) in an interpreter with
XNNPACK, driven token by token from Python; the processors and strategies are the XLA loop's.

The key/value cache lives in the interpreter's own input buffers (`past_key_i`, `past_value_i`):
each step writes only its new column there, through NumPy views of those buffers, so no step
copies the cache. The interpreter keeps its inputs between calls (TFLite never reuses a graph
input's memory for intermediate results). Shapes change only between a prompt (n tokens) and the
loop (one token): resizing costs a re-plan, not a conversion.

A large model's step comes in parts of its blocks (`formats.lite.cached_parts`), one interpreter
each, run in turn (each part's hidden state feeds the next): each part's file pages are released
once XNNPACK has packed it, before the next part is opened, so the file and the packed copy are
never both resident whole.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.errors import UserError, first_line
from gpt2_tf2.generation.loop import bucket
from gpt2_tf2.generation.processors import apply_processors
from gpt2_tf2.generation.sampler import Rows
from gpt2_tf2.generation.settings import History, Settings
from gpt2_tf2.generation.strategies import choose_tokens

MADV_DONTNEED = 4  # Linux's <sys/mman.h>


def cpu_count() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def release_file_pages(path: str) -> int:
    """Drop this process's resident pages of the file at `path`, which TFLite maps: once XNNPACK
    has packed its own copy of the weights (at the first allocation), the file's weight pages
    are not read again, yet they stay in the process's memory. Reading one again (a gather from
    the embedding) faults it back in from the page cache, so nothing changes but the memory:
    measured at 1558M in int8, resident 3.50 -> 2.03 GB, 83 ms a step before and after. Linux
    (`/proc/self/maps`, madvise); elsewhere nothing is done. Returns the bytes released."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = f.read().splitlines()
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    target, released = os.path.realpath(path), 0
    for line in maps:  # start-end perms offset dev inode path
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if madvise(start, end - start, MADV_DONTNEED) == 0:
                released += end - start
    return released


def make_interpreter(path: str, num_threads: int | None = None):
    """A TFLite interpreter for the file at `path` (XNNPACK is its default CPU delegate):
    LiteRT's (`ai_edge_litert`) if installed, else TensorFlow's own `tf.lite.Interpreter`.
    num_threads defaults to every core: TFLite's own default is one thread (measured at 124M,
    int8, batch 1: 18.6 ms a step on one thread, 10.9 ms on two)."""
    num_threads = num_threads or cpu_count()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that LiteRT replaces it
        try:
            return Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{path}: not a TensorFlow Lite model ({first_line(e)})") from None


class _Part:
    """One interpreter of a step: all of it, or the blocks `layers` of a large model's step."""

    def __init__(self, path: str, layers: tuple[int, int], step, num_threads: int | None):
        self.path, self.layers = path, layers
        self.interpreter = make_interpreter(path, num_threads)
        try:  # TFLite applies XNNPACK here, at the first allocation: within load(), not later
            self.interpreter.allocate_tensors()
        except RuntimeError as e:
            raise step.damaged(path, e) from None
        release_file_pages(path)  # before the next part is packed: one copy of each at a time
        if "serving_default" not in self.interpreter.get_signature_list():
            raise UserError(f"{path}: not a gpt2_tf2 decode step (it has no serving_default)")
        runner = self.interpreter.get_signature_runner()
        self.inputs = {name: d["index"] for name, d in runner.get_input_details().items()}
        self.outputs = {name: d["index"] for name, d in runner.get_output_details().items()}

    def set(self, name: str, value) -> None:
        self.interpreter.set_tensor(self.inputs[name], value)


class LiteStep:
    """One decode step in one interpreter, or in several that each run some of the blocks (a
    large model, `formats.lite.cached_parts`), the cache in their input buffers (module doc)."""

    def __init__(self, paths, hparams: HParams, num_threads: int | None = None):
        from gpt2_tf2.core.lite_step import part_layers

        paths = [paths] if isinstance(paths, str) else list(paths)
        self.hparams, self.path = hparams, paths[0]
        self.parts = [
            _Part(path, layers, self, num_threads)
            for path, layers in zip(paths, part_layers(hparams, len(paths)))
        ]
        self._past, self._new = [], []  # (part, tensor index) per layer: keys, then values
        for part in self.parts:
            for i in range(*part.layers):
                for kind in ("key", "value"):
                    self._past.append((part, part.inputs.get(f"past_{kind}_{i}")))
                    self._new.append((part, part.outputs.get(f"{kind}_{i}")))
        last = self.parts[-1]
        if any(i is None for _, i in self._past + self._new) or "logits" not in last.outputs:
            where = ", ".join(paths)
            raise UserError(f"{where}: its inputs do not match a {hparams.n_layer}-layer model")
        self._shape = None

    def _resize(self, batch: int, n: int, cache_len: int, k: int) -> None:
        if self._shape == (batch, n, cache_len, k):
            return
        hp = self.hparams
        for part in self.parts:
            it = part.interpreter
            if "tokens" in part.inputs:
                it.resize_tensor_input(part.inputs["tokens"], [batch, n])
            else:
                it.resize_tensor_input(part.inputs["x"], [batch, n, hp.n_embd])
            it.resize_tensor_input(part.inputs["offsets"], [batch])
            if "logits_at" in part.inputs:
                it.resize_tensor_input(part.inputs["logits_at"], [k])
        for part, index in self._past:
            part.interpreter.resize_tensor_input(index, [batch * hp.n_head, cache_len, hp.head_dim])
        for part in self.parts:
            try:
                part.interpreter.allocate_tensors()
            except RuntimeError as e:
                raise self.damaged(part.path, e) from None
        self._shape = (batch, n, cache_len, k)

    def _invoke(self, tokens, pos: int, offsets, logits_at) -> np.ndarray:
        x = None
        for part in self.parts:
            if x is None:
                part.set("tokens", np.asarray(tokens, np.int32))
            else:
                part.set("x", x)
            part.set("pos", np.asarray(pos, np.int32))
            part.set("offsets", np.asarray(offsets, np.int32))
            if "logits_at" in part.inputs:
                part.set("logits_at", np.asarray(logits_at, np.int32))
            try:
                part.interpreter.invoke()
            except RuntimeError as e:
                raise self.damaged(part.path, e) from None
            if "x" in part.outputs:
                x = part.interpreter.get_tensor(part.outputs["x"])  # [batch, n, embd]
        last = self.parts[-1]
        return last.interpreter.get_tensor(last.outputs["logits"])  # a copy: [batch, k, vocab]

    @staticmethod
    def damaged(path, error) -> UserError:
        return UserError(
            f"{path}: TensorFlow Lite cannot run it ({first_line(error)}); it does not hold "
            f"this model's decode step: convert or export it again"
        )

    def prompt(self, tokens, offsets, logits_at) -> tuple[np.ndarray, list]:
        """Run tokens [batch, n] from column 0 with an empty cache: (logits [batch, k, vocab],
        the keys and values of the n columns per layer, [batch * heads, n, head_dim] each)."""
        batch, n = np.shape(tokens)
        self._resize(batch, n, 1, len(logits_at))  # one cache column, masked (pos 0)
        for part, index in self._past:
            part.interpreter.tensor(index)().fill(0)  # masked, but 0 * NaN would be NaN
        logits = self._invoke(tokens, 0, offsets, logits_at)
        return logits, [part.interpreter.get_tensor(index) for part, index in self._new]

    def start(self, columns: list, cache_len: int) -> None:
        """Size the cache for one token at a time and fill its first columns with `columns`
        (from `prompt`), the rest with zeros: a column not yet written is masked, but a fresh
        buffer may hold NaNs, and a masked NaN still poisons the weighted sum (0 * NaN)."""
        batch = columns[0].shape[0] // self.hparams.n_head
        self._resize(batch, 1, cache_len, 1)
        n = columns[0].shape[1]
        for (part, index), value in zip(self._past, columns):
            past = part.interpreter.tensor(index)()  # a view of the input buffer
            past.fill(0)
            past[:, :n] = value

    def next(self, tokens, pos: int, offsets) -> np.ndarray:
        """The logits [batch, vocab] after tokens [batch] at column `pos` (after `start`); their
        keys and values are written into the cache at that column."""
        logits = self._invoke(np.reshape(tokens, [-1, 1]), pos, offsets, [0])
        for (part, past), (_, new) in zip(self._past, self._new):
            it = part.interpreter
            it.tensor(past)()[:, pos : pos + 1] = it.tensor(new)()
        return logits[:, 0]


class LiteDecoder:
    """What `LanguageModel` asks of a decoding backend, on a `LiteStep`: run the prompts, then
    the loop, whose processors and strategy are the XLA loop's own, compiled on their own."""

    def __init__(self, step: LiteStep, xla: bool = True):
        self.step = step
        self._choose = tf.function(_choose, jit_compile=xla, autograph=False)

    def prefill(self, context, prompt_len, cache_len, offsets):
        """As `loop.prefill`: (logits [batch, vocab], cache), the cache as (columns, length)."""
        prompt_len = int(prompt_len)
        tokens = np.asarray(context)[:, :prompt_len]
        offsets = np.zeros([len(tokens)], np.int32) if offsets is None else np.asarray(offsets)
        logits, columns = self.step.prompt(tokens, offsets, [prompt_len - 1])
        return logits[:, 0], (columns, cache_len)

    def run(self, run, settings, chunk=None):
        """A window's `run.length` tokens ([batch][k] ids), in pieces of `chunk` (else one),
        as `loop.advance` makes them: the same seed gives the same tokens."""
        columns, cache_len = run.cache
        self.step.start(columns, cache_len)
        prompt_len = int(run.prompt_len)
        batch = len(columns[0]) // self.step.hparams.n_head
        offsets = np.zeros([batch], np.int32) if run.offsets is None else np.asarray(run.offsets)
        history = np.asarray(loop_history(run.context, prompt_len, run.slots, run.stop))
        done, logits = np.zeros([batch], bool), run.logits
        start, chunk = prompt_len, chunk or run.length
        for step in range(run.length):
            position = prompt_len + step
            args = (logits, history, position, offsets)  # tensors: one trace for every step
            token = self._choose(*map(tf.constant, args), settings, tf.constant(step)).numpy()
            token = np.where(done, run.stop, token)
            history[:, position] = token
            done |= token == run.stop
            last = step + 1 == run.length or done.all()
            if last or (step + 1) % chunk == 0:
                yield history[:, start : position + 1].tolist()
                start = position + 1
            if last:
                return
            logits = self.step.next(token, position, offsets)

    def token_nll(self, tokens) -> np.ndarray:
        """As `LanguageModel._token_nll`: NLL of tokens[:, 1:] given what precedes them."""
        tokens = np.asarray(tokens, np.int32)
        batch, n = tokens.shape
        logits, _ = self.step.prompt(tokens[:, :-1], np.zeros([batch], np.int32), range(n - 1))
        return tf.nn.sparse_softmax_cross_entropy_with_logits(tokens[:, 1:], logits)


class Run(NamedTuple):
    """A window's rows after their prompts (`LiteRows.prefill`), for `LiteDecoder.run`."""

    length: int
    stop: int
    slots: int
    context: tf.Tensor  # int32 [batch, P]: the prompts, left-padded to one length, then padded
    prompt_len: tf.Tensor
    offsets: tf.Tensor | None  # int32 [batch]: each row's left padding; None if none has any
    logits: tf.Tensor  # after the prompt
    cache: list


class LiteRows(Rows):
    """A sampling call's rows on TensorFlow Lite (`sampler.Rows`): a window's prompts, left-
    padded to the longest (the padding masked), run once; then the interpreter's loop."""

    def prefill(self, contexts, length):
        size = max(len(c) for c in contexts)
        width = bucket(size, self.n_ctx)
        # Left-padded to the longest prompt, every prompt ends in column size - 1 and the loop
        # writes one column for all rows; the padding is masked (`GPT2.__call__`, offsets).
        padded = [[0] * (size - len(c)) + list(c) + [0] * (width - size) for c in contexts]
        context = tf.constant(padded, tf.int32)
        offsets = None  # prompts of one length take the plain path
        if any(len(c) != size for c in contexts):
            offsets = tf.constant([size - len(c) for c in contexts], tf.int32)
        slots = bucket(length, self.n_ctx)
        cache_len = min(width + slots, self.n_ctx)
        logits, cache = self.lm.lite.prefill(context, size, cache_len, offsets)
        return Run(length, self.stop, slots, context, tf.constant(size), offsets, logits, cache)

    def run(self, started, key, chunk=None):
        settings = Settings.make(self.config, key=key, stop_token=self.stop)
        yield from self.lm.lite.run(started, settings, chunk)


def loop_history(context, prompt_len: int, slots: int, stop: int):
    """The token history the XLA loop keeps (`loop.start_history`)."""
    from gpt2_tf2.generation.loop import start_history

    return start_history(tf.constant(context), prompt_len, slots, stop).numpy()


def _choose(logits, history, position, start, settings, step):
    """One token per row from the logits, as `loop.advance` chooses it."""
    logits = apply_processors(logits, settings, History(history, position, start))
    return choose_tokens(logits, settings, step)
