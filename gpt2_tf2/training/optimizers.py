"""Optimizers as plain `tf.Module`s: every slot and the step count are tracked variables, so a
`tf.train.Checkpoint` restores them exactly and a resumed run continues the same trajectory.

- adam: TF1's `tf.train.AdamOptimizer` (Kingma & Ba 2015, the "epsilon hat" form), which
  nshepperd's fork used: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t); w -= lr_t * m / (sqrt(v) + eps).
- adamw: the same with decoupled weight decay (Loshchilov & Hutter 2019) on matrices only.
- sgd: w -= lr * g.
- adafactor: factored second moments, no momentum, update clipping (Shazeer & Stern 2018),
  with an explicit learning rate; its state is O(rows + cols) per matrix instead of O(rows * cols).
"""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf2.training.config import OPTIMIZERS as NAMES  # noqa: E402 (the one list of names)


def _slot(var, name):
    return tf.Variable(tf.zeros_like(var), trainable=False, name=f"{var.name.split(':')[0]}/{name}")


class Optimizer(tf.Module):
    def __init__(self, variables, name):
        super().__init__(name=name)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._vars = list(variables)

    def apply(self, grads, lr):
        """One update of every variable from `grads` (same order) at learning rate `lr`."""
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        if not tf.distribute.has_strategy():
            for i, (g, v) in enumerate(zip(grads, self._vars)):
                self._update(i, tf.convert_to_tensor(g), v, lr, t)
            return
        # Under a strategy (cross-replica context): each device updates its copy of the
        # variable and of its slots from its copy of the all-reduced gradient (Keras does the
        # same); inside `update`, the slots resolve to that device's copies.
        extended = tf.distribute.get_strategy().extended
        for i, (g, v) in enumerate(zip(grads, self._vars)):
            fn = lambda var, g, lr, i=i: self._update(i, g, var, lr, t)  # noqa: E731
            extended.update(v, fn, args=(g, lr), group=False)

    def _update(self, i, g, v, lr, t):
        raise NotImplementedError


class SGD(Optimizer):
    def __init__(self, variables):
        super().__init__(variables, "sgd")

    def _update(self, i, g, v, lr, t):
        v.assign_sub(lr * g)


class Adam(Optimizer):
    def __init__(
        self, variables, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0, name="adam"
    ):
        super().__init__(variables, name)
        self.beta1, self.beta2, self.epsilon, self.weight_decay = (
            beta1,
            beta2,
            epsilon,
            weight_decay,
        )
        self.m = [_slot(v, "m") for v in self._vars]
        self.v = [_slot(v, "v") for v in self._vars]

    def _update(self, i, g, var, lr, t):
        m, v = self.m[i], self.v[i]
        m.assign(self.beta1 * m + (1 - self.beta1) * g)
        v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(g))
        lr_t = lr * tf.sqrt(1 - tf.pow(self.beta2, t)) / (1 - tf.pow(self.beta1, t))
        if self.weight_decay and var.shape.rank >= 2:  # decay weights, not biases, gains, wpe rows
            var.assign_sub(lr * self.weight_decay * var)
        var.assign_sub(lr_t * m / (tf.sqrt(v) + self.epsilon))


class Adafactor(Optimizer):
    def __init__(self, variables, decay_rate=0.8, epsilon=1e-30, clip_threshold=1.0):
        super().__init__(variables, "adafactor")
        self.decay_rate, self.epsilon, self.clip_threshold = decay_rate, epsilon, clip_threshold
        self.row, self.col, self.full = [], [], []
        for var in self._vars:
            shape = self._matrix_shape(var)
            name = var.name.split(":")[0]
            if shape is None:  # vectors keep a full second moment
                self.row.append(None)
                self.col.append(None)
                self.full.append(_slot(var, "v"))
            else:
                self.row.append(
                    tf.Variable(tf.zeros(shape[:1]), trainable=False, name=f"{name}/vr")
                )
                self.col.append(
                    tf.Variable(tf.zeros(shape[1:]), trainable=False, name=f"{name}/vc")
                )
                self.full.append(None)

    @staticmethod
    def _matrix_shape(var):
        dims = [d for d in var.shape.as_list() if d != 1]  # conv1d weights are [1, nx, nf]
        return dims if len(dims) == 2 else None

    def _update(self, i, g, var, lr, t):
        beta2 = 1.0 - tf.pow(t, -self.decay_rate)
        g2 = tf.square(g) + self.epsilon
        if self.full[i] is not None:
            v = self.full[i]
            v.assign(beta2 * v + (1 - beta2) * g2)
            update = g * tf.math.rsqrt(v)
        else:
            shape = self._matrix_shape(var)
            g2 = tf.reshape(g2, shape)  # [rows, cols]
            r, c = self.row[i], self.col[i]
            r.assign(beta2 * r + (1 - beta2) * tf.reduce_mean(g2, axis=1))
            c.assign(beta2 * c + (1 - beta2) * tf.reduce_mean(g2, axis=0))
            v_hat = r[:, None] * c[None, :] / tf.reduce_mean(r)  # rank-1 estimate, [rows, cols]
            update = tf.reshape(g, shape) * tf.math.rsqrt(v_hat)
            update = tf.reshape(update, var.shape)
        rms = tf.sqrt(tf.reduce_mean(tf.square(update)))
        update = update / tf.maximum(1.0, rms / self.clip_threshold)
        var.assign_sub(lr * update)


def make_optimizer(name: str, variables, weight_decay: float = 0.01) -> Optimizer:
    makers = {
        "adam": lambda: Adam(variables),
        "adamw": lambda: Adam(variables, weight_decay=weight_decay, name="adamw"),
        "sgd": lambda: SGD(variables),
        "adafactor": lambda: Adafactor(variables),
    }
    assert tuple(makers) == NAMES, "training.config.OPTIMIZERS lists the optimizers made here"
    if name not in makers:
        raise ValueError(name)
    return makers[name]()
