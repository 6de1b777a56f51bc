"""Device- and XLA-specific tricks, each in one place with the measurement that justifies it.

Everything else in the package is plain TensorFlow maths; what is here exists only because a
compiler or a device runs one spelling of the same maths faster than another. Each helper runs
the same eagerly, in a graph and under XLA, with the same results (`transposed_product`'s
spellings: the same to rounding, as any two kernels).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.python.ops import control_flow_util


def shape_list(x):
    """x's shape: Python ints where known (fewer ops to trace), scalar tensors elsewhere."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape.as_list())]


def in_xla() -> bool:
    """Whether the graph being traced will be compiled by XLA (tf.function(jit_compile=True))."""
    graph = tf.compat.v1.get_default_graph()
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(graph)


def cpu_only() -> bool:
    """No GPU visible: decoding may use `add_bias(..., cpu_matvec=True)`. Decided by the caller
    when it loads a model (generation), never while tracing, so that a traced or exported
    function does not freeze the choice of the machine that traced it."""
    return not tf.config.list_logical_devices("GPU")


def add_bias(out, b, cpu_matvec: bool = False):
    """out + b for a conv1d's output [rows, nf].

    `cpu_matvec`: the caller runs on a CPU and reads 2-D weights before a compiled decoding loop.
    XLA on a CPU fuses a bias add into a matrix-vector product (decoding one token at batch 1)
    and emits a slower kernel for the pair (CanBeOutputFused in XLA's cpu_instruction_fusion):
    subtracting the negated bias, which is exact, keeps the fast one (measured: 10-20% of a 124M
    step at batch 1). Larger products (batch > 1) fuse the add well, so they keep it.
    """
    if cpu_matvec and out.shape[0] == 1 and in_xla():
        return out - tf.cast(-b, out.dtype)
    return out + tf.cast(b, out.dtype)


def transposed_weights_faster(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether decoding on this machine reads the blocks' weights faster kept as [nf, nx]
    (`GPT2.transpose_weights`) than in OpenAI's [1, nx, nf]. Measured at 124M on TensorFlow 2.21,
    both layouts in one process (docs/benchmarks/ab-transposed-weights.md): on an AMD EPYC
    without AVX-512, sampling, engine steps and beams 1.07-1.16x faster transposed; on one with
    AVX-512, XLA's products at 4 to 16 rows ran slower transposed (engine steps 0.76x at 4 rows,
    0.85x at 16, 1.06x at one) and scoring 0.87-0.94x. So: transposed on an x86 CPU without
    AVX-512 (Linux's /proc/cpuinfo; WSL2's too), OpenAI's layout elsewhere, and on GPUs (not
    measured) and wherever the CPU's flags cannot be read."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration, IndexError):
        return False
    return "avx2" in flags and "avx512f" not in flags


def transposed_product(rows, w_t, many: int = 512):
    """rows [m, nx] x w_t [nf, nx] transposed: [m, nf], for weights kept as [nf, nx]
    (`GPT2.transpose_weights`, on the CPUs where `transposed_weights_faster`). Measured at the
    124M shapes on a 2-core CPU without AVX-512:
    under XLA this spelling is the fast one (decoding 1.07-1.16x faster than with [nx, nf]
    weights). Outside XLA (oneDNN) it ran 1.3-1.8x slower than [nx, nf] weights at 16 to 512
    rows, where w_t x rows^T, transposed, ran as fast or faster; beyond 512 rows (a long text
    scored) that one fell behind and this one is the nearer (1.0-1.1x slower than [nx, nf]).
    The product compiled by XLA alone was faster still there, but called from a plain graph's
    tf.cond it cost more than it saved (a test's seven generate calls: 7 -> 17 s)."""
    if in_xla():
        return tf.matmul(rows, w_t, transpose_b=True)

    def few():
        return tf.transpose(tf.matmul(w_t, rows, transpose_b=True))

    def lots():
        return tf.matmul(rows, w_t, transpose_b=True)

    m = rows.shape[0]
    if m is not None:
        return few() if m <= many else lots()
    return tf.cond(tf.shape(rows)[0] <= many, few, lots)


def first_argmax(x):
    """tf.argmax(x, -1) as int32 for x [batch, n]: each row's first largest value's index (NaN
    ignored), as two plain reductions, the largest value then the smallest index holding it.
    XLA on a CPU runs an argmax as one reduction over (value, index) pairs that it does not
    vectorise, and fuses the ops producing x into it: the Gumbel-noised logits of 8 x 50257
    took 3.0 ms under tf.argmax, 0.7 ms so (measured). Rows without NaN get tf.argmax's index;
    outside XLA it is tf.argmax (one kernel)."""
    if not in_xla():
        return tf.argmax(x, axis=-1, output_type=tf.int32)
    x = tf.where(tf.math.is_nan(x), tf.cast(float("-inf"), x.dtype), x)
    n = tf.shape(x)[-1]
    top = tf.reduce_max(x, axis=-1, keepdims=True)
    return tf.reduce_min(tf.where(x == top, tf.range(n), n), axis=-1)


def top_k(logits, n: int):
    """tf.math.top_k(logits, n) as (values, indices). Under XLA behind an optimization barrier:
    XLA on a CPU runs a top-k as a fast TopK (1 ms for 8 x 50257) only while its sort-and-slice
    pattern survives; a later slice of the result merged into it and made it a full sort (75 ms,
    measured)."""
    top = tf.math.top_k(logits, n)
    if in_xla():
        return tuple(xla.optimization_barrier(top.values, top.indices))
    return top.values, top.indices


def kth_largest(ranked, k):
    """The k-th value of each row of `ranked` [batch, n] (descending), as [batch, 1]; k in 1..n.

    A masked reduction, not a gather or slice: XLA on a CPU then keeps a preceding tf.math.top_k
    as its fast TopK (1 ms for 8 rows) instead of a full sort (75 ms, measured)."""
    n = ranked.shape[-1] or tf.shape(ranked)[-1]
    first_k = tf.range(n) < tf.minimum(k, n)
    return tf.reduce_min(tf.where(first_k, ranked, float("inf")), axis=-1, keepdims=True)


def select_column(values, column):
    """values[:, column] for values [batch, n], column [batch, 1]: a mask and a sum, not a gather
    (as in `kth_largest`, a gather after a top-k made XLA on a CPU sort the whole row)."""
    chosen = tf.range(shape_list(values)[1])[None, :] == column  # [batch, n]
    return tf.reduce_sum(tf.where(chosen, values, tf.zeros_like(values)), axis=-1)


def update_rows(buffer, x, pos):
    """`buffer` [a, T, c] with row i of x [a, n, c] written at positions pos[i] .. pos[i] + n - 1:
    rows at positions of their own (the slots of a decode engine). A scatter, which XLA does in
    place in a loop, as `update_slice`."""
    a, n = shape_list(x)[0], shape_list(x)[1]
    rows = tf.broadcast_to(tf.range(a)[:, None], [a, n])
    columns = pos[:, None] + tf.range(n)[None, :]  # [a, n]
    return tf.tensor_scatter_nd_update(buffer, tf.stack([rows, columns], -1), x)


def update_slice(buffer, x, pos):
    """`buffer` [a, T, c] with x [a, n, c] written at positions pos .. pos + n - 1.

    Under XLA a dynamic-update-slice, done in place (a whole generation then keeps one buffer);
    elsewhere a masked select over the buffer, which needs no XLA-only op.
    """
    if in_xla():
        return xla.dynamic_update_slice(buffer, x, tf.stack([0, pos, 0]))
    t, n = tf.shape(buffer)[1], tf.shape(x)[1]
    slots = tf.range(t)
    write = (slots >= pos) & (slots < pos + n)  # [T]
    x = tf.pad(x, [[0, 0], [pos, t - pos - n], [0, 0]])  # [a, T, c]
    return tf.where(write[:, None], x, buffer)
