#!/usr/bin/env python3
"""Generate text with a model exported by `python -m gpt2_tf2.export --format tflite`, without
gpt2_tf2: NumPy, a TensorFlow Lite interpreter (`ai-edge-litert`, or TensorFlow's `tf.lite`) and,
for text rather than token ids, Hugging Face `tokenizers` (GPT-2's BPE files; a model with a
SentencePiece `sp.model` takes ids here, or the `sentencepiece` package).

    python tools/tflite_generate.py DIR --prompt "The meaning of life is" --length 40
    python tools/tflite_generate.py DIR --ids 464,3616 --length 5 --top_k 0   # greedy, ids out

What a binding in another language does is the same (docs/tflite.md): the step's signature
`serving_default` takes tokens [batch, n], pos [batch] (or [1] for every row), offsets [batch],
logits_at [k] and per layer past_key_i / past_value_i [batch * heads, T, head_dim]; it returns
logits [batch, k, vocab] and the n new columns key_i / value_i, which the caller writes into
its cache at columns pos ...
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def interpreter(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=os.cpu_count())  # TFLite's default: one


class Step:
    """The exported decode step, batch 1, its cache kept in NumPy arrays."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, "hparams.json")) as f:
            hp = json.load(f)
        self.layers, self.heads = hp["n_layer"], hp["n_head"]
        self.head_dim = hp["n_embd"] // hp["n_head"]
        self.it = interpreter(os.path.join(directory, "model.tflite"))
        runner = self.it.get_signature_runner()
        self.inp = {k: v["index"] for k, v in runner.get_input_details().items()}
        self.out = {k: v["index"] for k, v in runner.get_output_details().items()}

    def __call__(self, tokens, pos, cache, logits_at):
        """Logits at `logits_at` after tokens [n] at columns pos.., and the new columns."""
        it, n = self.it, len(tokens)
        shapes = {"tokens": [1, n], "pos": [1], "offsets": [1], "logits_at": [len(logits_at)]}
        for name, array in cache.items():
            shapes[name] = array.shape
        for name, shape in shapes.items():
            it.resize_tensor_input(self.inp[name], shape)
        it.allocate_tensors()
        values = {"tokens": [tokens], "pos": [pos], "offsets": [0], "logits_at": logits_at}
        for name, value in values.items():
            it.set_tensor(self.inp[name], np.asarray(value, np.int32))
        for name, array in cache.items():
            it.set_tensor(self.inp[name], array)
        it.invoke()
        new = {name: it.get_tensor(self.out[name[5:]]) for name in cache}  # key_i, value_i
        return it.get_tensor(self.out["logits"])[0, -1], new


def generate(directory: str, ids: list[int], length: int, top_k: int, seed: int) -> list[int]:
    step = Step(directory)
    size = len(ids) + length
    names = [f"past_{kind}_{i}" for i in range(step.layers) for kind in ("key", "value")]
    cache = {name: np.zeros([step.heads, size, step.head_dim], np.float32) for name in names}
    rng = np.random.default_rng(seed)
    # The prompt in one call (its cache input is one masked column), then one token per call.
    empty = {name: np.zeros([step.heads, 1, step.head_dim], np.float32) for name in names}
    logits, new = step(ids, 0, empty, [len(ids) - 1])
    out, pos = [], len(ids)
    for name in names:
        cache[name][:, :pos] = new[name]
    while True:
        if top_k:  # sample among the k most likely tokens
            best = np.argpartition(logits, -top_k)[-top_k:]
            p = np.exp(logits[best] - logits[best].max())
            token = int(rng.choice(best, p=p / p.sum()))
        else:
            token = int(np.argmax(logits))
        out.append(token)
        if len(out) == length:
            return out
        logits, new = step([token], pos, cache, [0])
        for name in names:
            cache[name][:, pos : pos + 1] = new[name]
        pos += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="what export --format tflite wrote")
    parser.add_argument("--prompt", help="text to continue (needs the tokenizers package)")
    parser.add_argument("--ids", help="token ids to continue, comma-separated; prints ids")
    parser.add_argument(
        "--length", type=int, default=40, help="tokens generated after the prompt (default 40)"
    )
    parser.add_argument(
        "--top_k",
        type=int,
        default=40,
        help="draw among the k likeliest tokens (default 40; 0: greedy)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the draws: the same seed, the same text (default 0)",
    )
    args = parser.parse_args()
    if args.ids:
        ids = [int(i) for i in args.ids.split(",")]
        print(",".join(map(str, generate(args.directory, ids, args.length, args.top_k, args.seed))))
        return
    from tokenizers import ByteLevelBPETokenizer  # GPT-2's encoder.json / vocab.bpe format

    d = args.directory
    tok = ByteLevelBPETokenizer(os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe"))
    ids = tok.encode(args.prompt).ids if args.prompt else [tok.token_to_id("<|endoftext|>")]
    print((args.prompt or "") + tok.decode(generate(d, ids, args.length, args.top_k, args.seed)))


if __name__ == "__main__":
    main()
