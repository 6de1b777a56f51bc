"""Helpers for code that runs the same eagerly, in a graph and under XLA (model and sampling)."""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def shape_list(x):
    """x's shape: Python ints where known (fewer ops to trace), scalar tensors elsewhere."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape.as_list())]


def in_xla() -> bool:
    """Whether the graph being traced will be compiled by XLA (tf.function(jit_compile=True))."""
    graph = tf.compat.v1.get_default_graph()
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(graph)
