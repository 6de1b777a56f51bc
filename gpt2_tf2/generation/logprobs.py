"""Log-probabilities of the tokens a decode engine chooses, as OpenAI's `logprobs` reports
them: each token's own and the k most likely at its step, under the model's distribution
(before any processor or warper: what vLLM returns by default)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TokenScore(NamedTuple):
    """A chosen token's log-probability under the model and the most likely tokens there."""

    logprob: float
    top: list  # [(token id, log-probability)], most likely first


def token_scores(logits, token, k: int):
    """The model's own log-probabilities at a step, before any processor or warper (what vLLM
    returns by default): the chosen token's [batch], and the k most likely tokens' ids (int32
    [batch, k]) and log-probabilities [batch, k]. (TensorFlow imported here, at tracing: the
    engine reads the scores without it, `read_scores`.)"""
    import tensorflow as tf

    from gpt2_tf2.core.kernels import select_column

    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    top_logp, top_ids = tf.math.top_k(logp, k)
    return select_column(logp, token[:, None]), top_ids, top_logp


def read_scores(scores, slot: int, first: int, n: int) -> list[TokenScore]:
    """`TokenScore`s of columns first .. first + n - 1 of `slot`, from a store's arrays (the
    chosen log-probability, top ids, top log-probabilities, each [slots, cache_len, ...])."""
    chosen, ids, logps = (np.asarray(a[slot, first : first + n]) for a in scores)
    return [
        TokenScore(float(c), list(zip(i.tolist(), p.tolist())))
        for c, i, p in zip(chosen, ids, logps)
    ]


def prompt_scores(lm, tokens: list[int], k: int) -> list[TokenScore | None]:
    """Each token of a prompt scored by the model given the tokens before it, with the k most
    likely there (OpenAI's `echo` with `logprobs`: the prompt's own log-probabilities); the
    first token has nothing before it (None), as in OpenAI's replies. One forward pass; on
    tflite, on the interpreter, which belongs to one thread: the one that runs the model's
    decode engine (a server's scheduler, `Scheduler.call`)."""
    if len(tokens) < 2:
        return [None] * len(tokens)
    from gpt2_tf2.core import lazy

    tf = lazy.tensorflow()
    context = tokens[:-1]
    if lm.lite is not None:
        logits = lm.lite.logits([context])[0]
    else:
        logits = lm.model(tf.constant([context], tf.int32))["logits"][0]  # [n - 1, vocab]
    chosen, ids, logps = token_scores(logits, tf.constant(tokens[1:], tf.int32), max(k, 1))
    return [None] + [
        TokenScore(float(c), list(zip(i.tolist(), p.tolist()))[:k])
        for c, i, p in zip(chosen.numpy(), ids.numpy(), logps.numpy())
    ]
