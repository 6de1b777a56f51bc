"""The train step: loss, learning-rate schedule, averaged gradient accumulation, recompute.

Mirrors nshepperd's `train.py` maths: next-token cross-entropy averaged over the batch, Adam at
2e-5 by default, `--noise` replacing input tokens at random, `--only_train_transformer_layers`
training the blocks alone. Fixed here: accumulated gradients are averaged (k micro-batches of b
equal one batch of k*b; the fork summed them). The step is one compiled function of the windows and
the trainer's variables (model, optimizer, step), with randomness keyed by (seed, step), so it is
reproducible. It is written as `tf.distribute` runs a step on each replica: the loss of a replica's
windows is scaled by the global batch, and gradients are summed through the replica context, so k
replicas of b windows equal one device with k*b.
"""

from __future__ import annotations

import math

import tensorflow as tf

from gpt2_tf2.core.model import Dropout
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.optimizers import make_optimizer

COMPUTE_DTYPES = {"none": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}
INITIAL_LOSS_SCALE = 2.0**15
DROPOUT_STREAM = 7  # folded into a micro-batch's seed for its dropout masks (the noise splits it)
GROWTH_INTERVAL = 2000  # double the loss scale after this many finite steps (as Keras and AMP do)


def learning_rate(step, cfg: TrainConfig):
    """Linear warm-up over warmup_steps, then constant or cosine decay to 0 at cfg.steps."""
    step = tf.cast(step, tf.float32)
    lr = tf.constant(cfg.learning_rate, tf.float32)
    total_steps = cfg.steps or 0
    if cfg.lr_schedule == "cosine" and total_steps > cfg.warmup_steps:
        progress = (step - cfg.warmup_steps) / float(total_steps - cfg.warmup_steps)
        progress = tf.clip_by_value(progress, 0.0, 1.0)
        lr = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
    if cfg.warmup_steps > 0:
        lr = lr * tf.minimum(1.0, (step + 1.0) / float(cfg.warmup_steps))
    return lr


def lm_loss(model, windows, recompute=False, inputs=None, replicas: int = 1, dropout=None):
    """Mean next-token cross-entropy (nats) of windows [batch, L + 1]: L predictions per row.

    `inputs` (default: the windows) is what the model reads, e.g. the windows with --noise.
    `replicas`: the windows are one replica's share of a global batch of `replicas` equal
    shares; the loss is then scaled by the global batch, so the replicas' sum is its mean.
    `dropout`: a `Dropout` for the model (--dropout), or None.
    """
    inputs = windows if inputs is None else inputs
    logits = model(inputs[:, :-1], recompute=recompute, dropout=dropout)["logits"]  # [b, L, v]
    labels = windows[:, 1:]
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    loss = tf.reduce_mean(losses)
    return loss if replicas == 1 else loss / replicas


def replicas_in_sync() -> int:
    """How many replicas run this step (1 outside a `tf.distribute` strategy)."""
    return tf.distribute.get_replica_context().num_replicas_in_sync


def sum_over_replicas(tensors):
    """The sum of each tensor over the replicas, through the replica context (all-reduce)."""
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return tensors
    # identity: a value fed to the step has no device yet, which the multi-worker all-reduce
    # needs ("destinations can not be empty").
    tensors = tf.nest.map_structure(tf.identity, tensors)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensors)


def add_noise(windows, p: float, n_vocab: int, seed, replica=0, replicas: int = 1):
    """nshepperd's --noise: each input token is replaced by a random one with probability p.
    On `replicas` replicas, the draw is made for the global batch and replica `replica` keeps
    its rows, so the noise does not depend on how the batch is split."""
    if p <= 0:
        return windows
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(windows)
    if replicas > 1:
        shape = shape * tf.constant([replicas, 1])  # [global batch, L + 1]
    mask = tf.random.stateless_uniform(shape, s1) < p
    noise = tf.random.stateless_uniform(shape, s2, 0, n_vocab, dtype=tf.int32)
    if replicas > 1:  # this replica's rows of the global draw: [b, L + 1]
        begin = tf.stack([replica * tf.shape(windows)[0], 0])
        mask = tf.slice(mask, begin, tf.shape(windows))
        noise = tf.slice(noise, begin, tf.shape(windows))
    return tf.where(mask, noise, windows)


def cross_replica(fn, *args):
    """fn(*args) once for all replicas (in `tf.distribute`'s cross-replica context, where
    variables are updated on every device); a plain call without a strategy."""
    if not tf.distribute.has_strategy():
        return fn(*args)
    return tf.distribute.get_replica_context().merge_call(lambda _, *a: fn(*a), args=args)


def local(value):
    """One replica's copy of a value that is the same on every replica (e.g. all-reduced)."""
    if not tf.distribute.has_strategy():
        return value
    return tf.distribute.get_strategy().experimental_local_results(value)[0]


class Trainer(tf.Module):
    """Model + optimizer + global step; `train_step(windows)` is one optimizer update."""

    def __init__(self, model, cfg: TrainConfig):
        super().__init__(name="trainer")
        self.model, self.cfg = model, cfg
        self.seed = 0 if cfg.seed is None else cfg.seed  # a run resolves its seed before
        if cfg.only_train_transformer_layers:
            self.train_vars = [v for block in model.h for v in block.trainable_variables]
        else:
            self.train_vars = list(model.trainable_variables)
        self.optimizer = make_optimizer(cfg.optimizer, self.train_vars, cfg.weight_decay)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # Dynamic loss scaling (Micikevicius et al. 2018) keeps fp16 gradients from underflowing;
        # it is part of the checkpoint so a resumed fp16 run continues with the same scale.
        self.scaling = cfg.mixed_precision == "fp16"
        self.loss_scale = tf.Variable(
            INITIAL_LOSS_SCALE if self.scaling else 1.0, trainable=False, name="loss_scale"
        )
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
        # XLA: fused elementwise work and better buffer reuse (124M, 1 x 1024, CPU: 114 -> 122
        # tokens/s, peak 6.3 -> 5.5 GB). Traced per window shape, which is fixed for a run.
        self.train_step = tf.function(self._train_step, jit_compile=True, autograph=False)
        self.eval_loss = tf.function(
            lambda w: lm_loss(self.model, w),
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
            autograph=False,
        )

    def gradients(self, windows):
        """Loss and gradients averaged over micro-batches: windows [accumulate, batch, L + 1]."""
        step_seed = tf.stack([tf.constant(self.seed, tf.int64), self.step])
        replicas = replicas_in_sync()
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        n_vocab = self.model.hparams.n_vocab

        def micro(i):
            micro_seed = tf.random.experimental.stateless_fold_in(step_seed, tf.cast(i, tf.int64))
            inputs = add_noise(windows[i], self.cfg.noise, n_vocab, micro_seed, replica, replicas)
            dropout = self.dropout(micro_seed, replica)
            with tf.GradientTape() as tape:
                loss = lm_loss(
                    self.model,
                    windows[i],
                    self.cfg.memory_saving_gradients,
                    inputs,
                    replicas,
                    dropout,
                )
                scaled = loss * self.loss_scale if self.scaling else loss
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, self.train_vars)]
            if self.scaling:
                grads = [g / self.loss_scale for g in grads]
            return loss, grads

        # The first micro-batch starts the sums: no zero-filled gradient set and no additions
        # when there is a single one (the usual case; under XLA the count is static).
        total_loss, total_grads = micro(0)
        n_micro = windows.shape[0] or tf.shape(windows)[0]
        if isinstance(n_micro, int) and n_micro == 1:
            return total_loss, total_grads

        def body(i, total_loss, total_grads):
            loss, grads = micro(i)
            return i + 1, total_loss + loss, [t + g for t, g in zip(total_grads, grads)]

        _, total_loss, total_grads = tf.while_loop(
            lambda i, *_: i < n_micro, body, (tf.constant(1), total_loss, total_grads)
        )
        scale = 1.0 / tf.cast(n_micro, tf.float32)
        return total_loss * scale, [g * scale for g in total_grads]

    def dropout(self, micro_seed, replica):
        """The micro-batch's `Dropout` (None without --dropout). Its masks are keyed by seed,
        step and micro-batch, like the noise, and by replica: each replica draws its own, so
        a run is reproducible for a given number of replicas (unlike the noise, they are not
        drawn for the global batch: that would be a mask for every activation of all of it)."""
        if self.cfg.dropout <= 0:
            return None
        seed = tf.random.experimental.stateless_fold_in(micro_seed, DROPOUT_STREAM)
        return Dropout(self.cfg.dropout, tf.random.experimental.stateless_fold_in(seed, replica))

    def _train_step(self, windows):
        """One update from windows [accumulate, batch, L + 1]: a function of the trainer's
        variables and the windows only (randomness is keyed by seed and step)."""
        return self.update(*self.gradients(windows))

    def update(self, loss, grads):
        """Sum loss and gradients over replicas, clip, and apply them once for all replicas
        (unless fp16 overflowed); the step count advances either way."""
        loss, grads = sum_over_replicas((loss, grads))
        lr = learning_rate(self.step, self.cfg)
        if self.cfg.grad_clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.cfg.grad_clip)
        finite = None
        if self.scaling:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        applied = cross_replica(self._apply, grads, lr, finite)
        return {"loss": loss, "lr": lr, "applied": applied, "loss_scale": self.loss_scale + 0}

    def _apply(self, grads, lr, finite):
        def update():
            self.optimizer.apply(grads, lr)
            if self.scaling:
                self.good_steps.assign_add(1)
                if_grow = self.good_steps >= GROWTH_INTERVAL
                self.loss_scale.assign(tf.where(if_grow, self.loss_scale * 2, self.loss_scale))
                self.good_steps.assign(tf.where(if_grow, tf.constant(0, tf.int64), self.good_steps))
            return tf.constant(True)

        def skip():  # an overflow: drop this update and halve the scale
            self.loss_scale.assign(tf.maximum(self.loss_scale / 2, 1.0))
            self.good_steps.assign(0)
            return tf.constant(False)

        applied = tf.cond(local(finite), update, skip) if self.scaling else update()
        self.step.assign_add(1)
        return applied
