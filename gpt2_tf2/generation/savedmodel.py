"""A model as a TensorFlow SavedModel with serving signatures, for TensorFlow Serving and for
`tf.saved_model.load` in a process that never imports gpt2_tf2.

Signatures (all batch-major, one prompt length per batch):
- `generate`: tokens int32 [batch, prompt], length, temperature, top_k, top_p, seed ->
  tokens int32 [batch, length] (after a row's end-of-text token: that token again);
- `score`: tokens int32 [batch, n] -> nll float32 [batch, n - 1], the negative log-likelihood
  of each token after the first, in nats.
The graph is the package's own decode loop (`generation.loop`) and model (`core.model`), traced
without XLA and without the CPU-only kernel choice (`kernels.add_bias`): it runs on whatever
devices the serving machine has, not those of the machine that exported it. (A format, but it
lives here, above the decode loop it exports: `formats` sits below `generation`.)
"""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf2.generation import loop
from gpt2_tf2.generation.config import TENSORS
from gpt2_tf2.generation.settings import Settings

SIGNATURES = ("generate", "score")
SIGNATURE_SETTINGS = ("temperature", "top_k", "top_p")  # GenerationConfig's, as they were first


class Serving(tf.Module):
    """The model's variables and the two serving functions."""

    def __init__(self, model, eot: int | None):
        super().__init__(name="gpt2_tf2")
        self.model = model
        self.stop = -1 if eot is None else int(eot)
        self.n_ctx = model.hparams.n_ctx

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="tokens"),
            tf.TensorSpec([], tf.int32, name="length"),
            *(tf.TensorSpec([], TENSORS[name], name=name) for name in SIGNATURE_SETTINGS),
            tf.TensorSpec([], tf.int64, name="seed"),
        ],
        autograph=False,
    )
    def generate(self, tokens, length, temperature, top_k, top_p, seed):
        prompt = tf.shape(tokens)[1]
        tf.debugging.assert_less_equal(
            prompt + length, self.n_ctx, message="prompt + length exceeds the model's context"
        )
        # The settings the signature takes; the others keep GenerationConfig's defaults.
        settings = Settings.make(stop_token=self.stop)._replace(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=tf.stack([seed, tf.constant(0, tf.int64)]),  # as generate_tokens' first batch
        )
        # Every slot of the context: shapes inside the loop are then fixed by n_ctx alone.
        slots = self.n_ctx
        logits, cache = loop.prefill(self.model, tokens, prompt, self.n_ctx)
        out = loop.continue_decode(
            self.model, logits, cache, tokens, prompt, length, settings, slots
        )
        return {"tokens": out[:, :length]}

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")], autograph=False
    )
    def score(self, tokens):
        logits = self.model(tokens[:, :-1])["logits"]
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits)
        return {"nll": nll}


def write_savedmodel(model, eot: int | None, out: str) -> None:
    """Save `model` (a `GPT2`) with the serving signatures into `out`, a new directory."""
    serving = Serving(model, eot)
    signatures = {"generate": serving.generate, "score": serving.score}
    tf.saved_model.save(serving, out, signatures=signatures)
