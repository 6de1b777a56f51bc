"""Decoding on TensorFlow Lite: a converted decode step (`core.lite_step`) in an interpreter with
XNNPACK, driven token by token from Python; the processors and strategies are the XLA loop's.

The key/value cache lives in the interpreter's own input buffers (`past_key_i`, `past_value_i`):
each step writes only its new column there, through NumPy views of those buffers, so no step
copies the cache. The interpreter keeps its inputs between calls (TFLite never reuses a graph
input's memory for intermediate results). Shapes change only between a prompt (n tokens) and the
loop (one token): resizing costs a re-plan, not a conversion.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.errors import UserError, first_line
from gpt2_tf2.generation.processors import apply_processors
from gpt2_tf2.generation.settings import History
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


class LiteStep:
    """One decode step in an interpreter, the cache in its input buffers (see module doc)."""

    def __init__(self, path: str, hparams: HParams, num_threads: int | None = None):
        self.hparams, self.path = hparams, path
        self.interpreter = make_interpreter(path, num_threads)
        try:  # TFLite applies XNNPACK here, at the first allocation: within load(), not later
            self.interpreter.allocate_tensors()
        except RuntimeError as e:
            raise self._damaged(e) from None
        release_file_pages(path)
        signatures = self.interpreter.get_signature_list()
        if "serving_default" not in signatures:
            raise UserError(f"{path}: not a gpt2_tf2 decode step (it has no serving_default)")
        runner = self.interpreter.get_signature_runner()
        self._in = {name: d["index"] for name, d in runner.get_input_details().items()}
        self._out = {name: d["index"] for name, d in runner.get_output_details().items()}
        names = [f"past_{kind}_{i}" for i in range(hparams.n_layer) for kind in ("key", "value")]
        self._past = [self._in.get(name) for name in names]
        self._new = [self._out.get(name[5:]) for name in names]  # key_i, value_i
        if None in self._past or None in self._new or "logits" not in self._out:
            raise UserError(f"{path}: its inputs do not match a {hparams.n_layer}-layer model")
        self._shape = None

    def _resize(self, batch: int, n: int, cache_len: int, k: int) -> None:
        if self._shape == (batch, n, cache_len, k):
            return
        it, hp = self.interpreter, self.hparams
        it.resize_tensor_input(self._in["tokens"], [batch, n])
        it.resize_tensor_input(self._in["offsets"], [batch])
        it.resize_tensor_input(self._in["logits_at"], [k])
        for index in self._past:
            it.resize_tensor_input(index, [batch * hp.n_head, cache_len, hp.head_dim])
        try:
            it.allocate_tensors()
        except RuntimeError as e:
            raise self._damaged(e) from None
        self._shape = (batch, n, cache_len, k)

    def _set(self, name: str, value) -> None:
        self.interpreter.set_tensor(self._in[name], np.asarray(value, np.int32))

    def _invoke(self, tokens, pos: int, offsets, logits_at) -> np.ndarray:
        self._set("tokens", tokens)
        self._set("pos", pos)
        self._set("offsets", offsets)
        self._set("logits_at", logits_at)
        try:
            self.interpreter.invoke()
        except RuntimeError as e:
            raise self._damaged(e) from None
        return self.interpreter.get_tensor(self._out["logits"])  # a copy: [batch, k, vocab]

    def _damaged(self, error) -> UserError:
        return UserError(
            f"{self.path}: TensorFlow Lite cannot run it ({first_line(error)}); it does not hold "
            f"this model's decode step: convert or export it again"
        )

    def prompt(self, tokens, offsets, logits_at) -> tuple[np.ndarray, list]:
        """Run tokens [batch, n] from column 0 with an empty cache: (logits [batch, k, vocab],
        the keys and values of the n columns per layer, [batch * heads, n, head_dim] each)."""
        batch, n = np.shape(tokens)
        self._resize(batch, n, 1, len(logits_at))  # one cache column, masked (pos 0)
        for index in self._past:
            self.interpreter.tensor(index)().fill(0)  # masked, but 0 * NaN would be NaN
        logits = self._invoke(tokens, 0, offsets, logits_at)
        return logits, [self.interpreter.get_tensor(index) for index in self._new]

    def start(self, columns: list, cache_len: int) -> None:
        """Size the cache for one token at a time and fill its first columns with `columns`
        (from `prompt`), the rest with zeros: a column not yet written is masked, but a fresh
        buffer may hold NaNs, and a masked NaN still poisons the weighted sum (0 * NaN)."""
        batch = columns[0].shape[0] // self.hparams.n_head
        self._resize(batch, 1, cache_len, 1)
        n = columns[0].shape[1]
        for index, value in zip(self._past, columns):
            past = self.interpreter.tensor(index)()  # a view of the input buffer
            past.fill(0)
            past[:, :n] = value

    def next(self, tokens, pos: int, offsets) -> np.ndarray:
        """The logits [batch, vocab] after tokens [batch] at column `pos` (after `start`); their
        keys and values are written into the cache at that column."""
        logits = self._invoke(np.reshape(tokens, [-1, 1]), pos, offsets, [0])
        for past, new in zip(self._past, self._new):
            self.interpreter.tensor(past)()[:, pos : pos + 1] = self.interpreter.tensor(new)()
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


def loop_history(context, prompt_len: int, slots: int, stop: int):
    """The token history the XLA loop keeps (`loop.start_history`)."""
    from gpt2_tf2.generation.loop import start_history

    return start_history(tf.constant(context), prompt_len, slots, stop).numpy()


def _choose(logits, history, position, start, settings, step):
    """One token per row from the logits, as `loop.advance` chooses it."""
    logits = apply_processors(logits, settings, History(history, position, start))
    return choose_tokens(logits, settings, step)
