"""Training-time augmentation: the small distortions that separate real scans from MNIST.

Rotation, scale, shear and shift are one random affine map per digit, resampled once: chaining
Keras's separate Random* layers resamples three times, and the blur that leaves on the strokes cost
about 0.1 point of MNIST test accuracy here. Stroke width (pens differ far more than MNIST's writers
did) is a grey-scale dilation or erosion. Real postal scans gained about a point of accuracy from this
while MNIST accuracy barely moved, so it is on for the ``cnn``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

ROTATION_DEG = 10
SCALE = 0.1
SHEAR = 0.15
SHIFT_PX = 2.5


class Augment(layers.Layer):
    """A random affine map and stroke width per image; identity outside training."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        return self._stroke_width(self._affine(images))

    def _uniform(self, n, bound):
        return keras.random.uniform((n,), -bound, bound, seed=self.generator)

    def _affine(self, images):
        n = tf.shape(images)[0]
        angle = self._uniform(n, math.radians(ROTATION_DEG))
        scale = 1.0 + self._uniform(n, SCALE)
        shear = self._uniform(n, SHEAR)
        shift_x, shift_y = self._uniform(n, SHIFT_PX), self._uniform(n, SHIFT_PX)
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        # Output pixel -> input pixel: rotate and scale about the centre, shear, then shift.
        m00, m01, m10, m11 = cos, cos * shear - sin, sin, sin * shear + cos
        centre = 13.5
        transforms = tf.stack(
            [
                m00, m01, centre - m00 * centre - m01 * centre - shift_x,
                m10, m11, centre - m10 * centre - m11 * centre - shift_y,
                tf.zeros_like(cos), tf.zeros_like(cos),
            ],
            axis=1,
        )  # fmt: skip
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )

    def _stroke_width(self, images):
        """A fifth of the digits get thicker strokes, a fifth thinner ones, by a pixel."""
        thick = tf.nn.max_pool2d(images, 2, 1, "SAME")
        thin = -tf.nn.max_pool2d(-images, 2, 1, "SAME")
        choice = keras.random.uniform((tf.shape(images)[0], 1, 1, 1), seed=self.generator)
        return tf.where(choice < 0.2, thick, tf.where(choice < 0.4, thin, images))


def augmenter(seed: int) -> Augment:
    """Applied to training batches only; it is never part of the saved model."""
    return Augment(seed, name="augment")
