"""The train step: loss, learning-rate schedule, averaged gradient accumulation, recompute.

Mirrors nshepperd's `train.py` maths: next-token cross-entropy averaged over the batch, Adam at
2e-5 by default, `--noise` replacing input tokens at random, `--only_train_transformer_layers`
training the blocks alone. Fixed here: accumulated gradients are averaged (k micro-batches of b
equal one batch of k*b; the fork summed them). The step is one compiled function of the windows and
the trainer's variables (model, optimizer, step), with randomness keyed by (seed, step), so it is
reproducible and ready for `tf.distribute`.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from gpt2_tf2.optimizers import make_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 2e-5
    optimizer: str = "adam"
    accumulate_gradients: int = 1
    memory_saving_gradients: bool = False
    only_train_transformer_layers: bool = False
    noise: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine" (to 0 at total_steps)
    total_steps: int = 0
    grad_clip: float = 0.0  # global-norm clip; 0 = off
    weight_decay: float = 0.01  # adamw only
    seed: int = 0


def learning_rate(step, cfg: TrainConfig):
    """Linear warm-up over warmup_steps, then constant or cosine decay to 0 at total_steps."""
    step = tf.cast(step, tf.float32)
    lr = tf.constant(cfg.learning_rate, tf.float32)
    if cfg.lr_schedule == "cosine" and cfg.total_steps > cfg.warmup_steps:
        progress = (step - cfg.warmup_steps) / float(cfg.total_steps - cfg.warmup_steps)
        progress = tf.clip_by_value(progress, 0.0, 1.0)
        lr = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
    if cfg.warmup_steps > 0:
        lr = lr * tf.minimum(1.0, (step + 1.0) / float(cfg.warmup_steps))
    return lr


def lm_loss(model, windows, recompute: bool = False):
    """Mean next-token cross-entropy (nats) of windows [batch, L + 1]: L predictions per row."""
    logits = model(windows[:, :-1], recompute=recompute)["logits"]  # [batch, L, vocab]
    labels = windows[:, 1:]
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(losses)


def add_noise(windows, p: float, n_vocab: int, seed):
    """nshepperd's --noise: each input token is replaced by a random one with probability p."""
    if p <= 0:
        return windows
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    mask = tf.random.stateless_uniform(tf.shape(windows), s1) < p
    noise = tf.random.stateless_uniform(tf.shape(windows), s2, 0, n_vocab, dtype=tf.int32)
    return tf.where(mask, noise, windows)


class Trainer(tf.Module):
    """Model + optimizer + global step; `train_step(windows)` is one optimizer update."""

    def __init__(self, model, cfg: TrainConfig):
        super().__init__(name="trainer")
        self.model, self.cfg = model, cfg
        if cfg.only_train_transformer_layers:
            self.train_vars = [v for block in model.h for v in block.trainable_variables]
        else:
            self.train_vars = list(model.trainable_variables)
        self.optimizer = make_optimizer(cfg.optimizer, self.train_vars, cfg.weight_decay)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.train_step = tf.function(
            self._train_step, input_signature=[tf.TensorSpec([None, None, None], tf.int32)]
        )
        self.eval_loss = tf.function(
            lambda w: lm_loss(self.model, w),
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
        )

    def gradients(self, windows):
        """Loss and gradients averaged over micro-batches: windows [accumulate, batch, L + 1]."""
        n_micro = tf.shape(windows)[0]
        step_seed = tf.stack([tf.constant(self.cfg.seed, tf.int64), self.step])
        total_loss = tf.constant(0.0)
        total_grads = [tf.zeros_like(v) for v in self.train_vars]
        for i in tf.range(n_micro):
            micro_seed = tf.random.experimental.stateless_fold_in(step_seed, tf.cast(i, tf.int64))
            inputs = add_noise(windows[i], self.cfg.noise, self.model.hparams.n_vocab, micro_seed)
            with tf.GradientTape() as tape:
                logits = self.model(inputs[:, :-1], recompute=self.cfg.memory_saving_gradients)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=windows[i][:, 1:], logits=logits["logits"]
                    )
                )
            grads = tape.gradient(loss, self.train_vars)
            total_loss += loss
            total_grads = [t + tf.convert_to_tensor(g) for t, g in zip(total_grads, grads)]
        scale = 1.0 / tf.cast(n_micro, tf.float32)
        return total_loss * scale, [g * scale for g in total_grads]

    def _train_step(self, windows):
        loss, grads = self.gradients(windows)
        if self.cfg.grad_clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.cfg.grad_clip)
        lr = learning_rate(self.step, self.cfg)
        self.optimizer.apply(grads, lr)
        self.step.assign_add(1)
        return {"loss": loss, "lr": lr}
