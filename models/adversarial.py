"""Adversarial regularization in training and FGSM perturbations in evaluation (Keras 3).

Training follows Goodfellow et al. 2015 ("Explaining and Harnessing Adversarial Examples") as Neural
Structured Learning's ``AdversarialRegularization`` does it: each batch's loss is

    loss(x) + multiplier * loss(x + step * sign(grad_x loss(x)))

with ``step`` on the [0, 1] pixel scale. The networks take pixels in [0, 255], so the step applied is
``255 * step`` and perturbed pixels are clipped back to [0, 255].

FGSM runs on every Keras backend; the training wrapper needs a backend whose training step is
written imperatively, TensorFlow (the default) or PyTorch (``KERAS_BACKEND=torch``).
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["AdversarialRegularization", "fgsm", "accuracy_under_fgsm", "PIXEL_SCALE"]

# The networks' input range: steps given on the [0, 1] scale are multiplied by this.
PIXEL_SCALE = 255.0

# Backends whose train_step the wrapper implements.
_TRAINING_BACKENDS = ("tensorflow", "torch")


class AdversarialRegularization(keras.Model):
    """Trains ``base`` with an adversarial term; a training device only, never saved itself.

    Checkpoints of the wrapper (``BackupAndRestore``) hold ``base``'s weights and the optimizer's
    state; the model to keep and ship is ``base``, a plain functional model. Batches arrive
    augmented (``models.feed``), so the clean and the perturbed loss see the same view. The
    ``loss`` it reports in training is the total; ``adversarial_loss`` the perturbed term alone.
    Validation (``test_step``) is ``base``'s plain loss.
    """

    def __init__(self, base: keras.Model, multiplier: float, step: float, name: str = "adversarial"):
        super().__init__(name=name)
        if multiplier < 0 or step <= 0:
            raise ValueError(f"need multiplier >= 0 and step > 0, got {multiplier} and {step}")
        if keras.backend.backend() not in _TRAINING_BACKENDS:
            raise ValueError(f"adversarial regularization trains with KERAS_BACKEND set to one of "
                             f"{_TRAINING_BACKENDS}, not {keras.backend.backend()!r}")
        self.base = base
        self.multiplier = float(multiplier)
        self.step = float(step)
        self.adversarial_loss_tracker = keras.metrics.Mean(name="adversarial_loss")
        # Built from the start, so BackupAndRestore can restore into it before the first batch.
        self.built = True

    def call(self, x, training=False):
        return self.base(x, training=training)

    def perturb(self, x, y, sample_weight=None):
        """(perturbed x, clean predictions, clean loss) for a batch of [0, 255] pixels (TensorFlow).

        The clean loss is computed on a tape that also watches ``x``, so the caller's outer tape
        reuses it for the weights' gradients instead of running the clean batch twice.
        """
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            y_pred = self.base(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        grad = tape.gradient(loss, x)
        x_adv = tf.clip_by_value(x + self.step * PIXEL_SCALE * tf.sign(grad), 0.0, PIXEL_SCALE)
        return tf.stop_gradient(x_adv), y_pred, loss

    def test_step(self, data):
        logs = super().test_step(data)
        logs.pop(self.adversarial_loss_tracker.name, None)
        return logs

    def _track(self, total, adv_loss, n) -> None:
        self._loss_tracker.update_state(total, sample_weight=n)
        self.adversarial_loss_tracker.update_state(adv_loss, sample_weight=n)

    def train_step(self, data):
        if keras.backend.backend() == "torch":
            return self._torch_train_step(data)
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = keras.ops.cast(x, "float32")
        with tf.GradientTape() as tape:
            x_adv, y_pred, loss = self.perturb(x, y, sample_weight)
            y_adv = self.base(x_adv, training=True)
            adv_loss = self._compute_loss(x=x_adv, y=y, y_pred=y_adv, sample_weight=sample_weight, training=True)
            total = loss + self.multiplier * adv_loss
            self._track(total, adv_loss, tf.shape(x)[0])
            scaled = self.optimizer.scale_loss(total)
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _torch_train_step(self, data):
        """The same step on PyTorch: autograd for the input's gradient, then for the weights'."""
        import torch

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = keras.ops.cast(x, "float32").detach().requires_grad_(True)
        y_pred = self.base(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        x_adv = torch.clamp(x.detach() + self.step * PIXEL_SCALE * torch.sign(grad), 0.0, PIXEL_SCALE)
        y_adv = self.base(x_adv, training=True)
        adv_loss = self._compute_loss(x=x_adv, y=y, y_pred=y_adv, sample_weight=sample_weight, training=True)
        total = loss + self.multiplier * adv_loss
        self._track(total.detach(), adv_loss.detach(), x.shape[0])
        self.zero_grad()
        self.optimizer.scale_loss(total).backward()
        weights = self.trainable_weights
        with torch.no_grad():
            self.optimizer.apply([v.value.grad for v in weights], weights)
        return self.compute_metrics(x.detach(), y, y_pred.detach(), sample_weight=sample_weight)


def fgsm(model: keras.Model, x: np.ndarray, labels: np.ndarray, eps: float, batch_size: int = 256) -> np.ndarray:
    """FGSM (Goodfellow et al. 2015) copies of float32 [0, 255] faces (N, S, S, C) against int ``labels``.

    ``eps`` is on the [0, 1] pixel scale; the gradient is that of the cross-entropy of ``model``'s
    softmax output (N, classes) with the true class, the model in inference mode.
    """
    step = _fgsm_step(model, keras.losses.SparseCategoricalCrossentropy(), eps * PIXEL_SCALE)
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for i in range(0, len(x), batch_size):
        out[i:i + batch_size] = step(x[i:i + batch_size], np.asarray(labels[i:i + batch_size]))
    return out


def _fgsm_step(model: keras.Model, loss_fn, step: float):
    """``(x, labels) -> x + step * sign(grad_x loss)`` clipped to [0, 255], numpy in and out, per backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def tf_step(xb, yb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                loss = loss_fn(yb, model(xb, training=False))
            return tf.clip_by_value(xb + step * tf.sign(tape.gradient(loss, xb)), 0.0, PIXEL_SCALE)

        return lambda xb, yb: tf_step(tf.constant(xb), tf.constant(yb)).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def jax_step(xb, yb):
            def loss(xv):
                y_pred, _ = model.stateless_call(trainable, frozen, xv, training=False)
                return loss_fn(yb, y_pred)

            return jnp.clip(xb + step * jnp.sign(jax.grad(loss)(xb)), 0.0, PIXEL_SCALE)

        return lambda xb, yb: np.asarray(jax_step(xb, yb))
    if backend == "torch":
        import torch

        def torch_step(xb, yb):
            xt = keras.ops.convert_to_tensor(xb).requires_grad_(True)
            loss = loss_fn(keras.ops.convert_to_tensor(yb), model(xt, training=False))
            (grad,) = torch.autograd.grad(loss, xt)
            return keras.ops.convert_to_numpy(torch.clamp(xt.detach() + step * torch.sign(grad), 0.0, PIXEL_SCALE))

        return torch_step
    raise ValueError(f"FGSM is not written for the Keras backend {backend!r}")


def accuracy_under_fgsm(model: keras.Model, images: np.ndarray, labels: np.ndarray, eps: float,
                        tta: bool = False) -> float:
    """Accuracy on FGSM copies of uint8 (N, 48, 48) grey faces (flip TTA applied after the perturbation)."""
    from models.train import emotion_predict

    x = fgsm(model, images[..., None].astype(np.float32), labels, eps)
    return float((emotion_predict(model, x[..., 0], tta=tta).argmax(1) == labels).mean())
