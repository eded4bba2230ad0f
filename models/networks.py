"""Keras networks for emotion (FER2013) and age + gender (UTKFace).

Every network takes pixels in [0, 255] (float32) and rescales itself, so callers feed plain image
arrays. Training-time augmentation happens before the network, on the host (``models.augment``).
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["emotion_net", "age_gender_net", "ARCHITECTURES"]

ARCHITECTURES = ("vgg", "small", "resnet")


def _conv_bn_relu(x, width: int, name: str):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _backbone(x, arch: str, widths: tuple[int, ...], first_block_convs: int = 2):
    """VGG-style blocks (two 3x3 conv + BN + ReLU, then 2x2 max pool), or residual blocks."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    for b, width in enumerate(widths):
        if arch == "resnet" and b > 0:
            shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"b{b}_proj")(x)
            shortcut = layers.BatchNormalization(name=f"b{b}_proj_bn")(shortcut)
            y = _conv_bn_relu(x, width, f"b{b}c0")
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"b{b}c1_conv")(y)
            y = layers.BatchNormalization(name=f"b{b}c1_bn")(y)
            x = layers.ReLU(name=f"b{b}_out")(layers.Add(name=f"b{b}_add")([shortcut, y]))
        else:
            n = 1 if arch == "small" else (first_block_convs if b == 0 else 2)
            for c in range(n):
                x = _conv_bn_relu(x, width, f"b{b}c{c}")
        if b < len(widths) - 1:
            x = layers.MaxPooling2D(2, name=f"b{b}_pool")(x)
    return layers.GlobalAveragePooling2D(name="gap")(x)


def emotion_net(
    num_classes: int = 7,
    input_size: int = 48,
    arch: str = "vgg",
    widths: tuple[int, ...] = (32, 64, 128, 256),
    dropout: float = 0.4,
) -> keras.Model:
    """Emotion classifier: (N, S, S, 1) grey pixels in [0, 255] -> (N, num_classes) softmax."""
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = _backbone(x, arch, widths)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(128, activation="relu", name="embedding")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="emotion")


def age_gender_net(
    input_size: int = 64,
    arch: str = "vgg",
    widths: tuple[int, ...] = (32, 64, 128, 256),
    dropout: float = 0.3,
    mean_age: float = 33.0,
) -> keras.Model:
    """Age and gender: (N, S, S, 3) RGB pixels in [0, 255] -> {'age': (N, 1) years, 'gender': (N, 1) P(female)}."""
    inputs = keras.Input((input_size, input_size, 3), name="face")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    # A single conv in the first block: at 64x64 the first block dominates the cost.
    x = _backbone(x, arch, widths, first_block_convs=1)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(128, activation="relu", name="embedding")(x)
    age = layers.Dense(1, bias_initializer=keras.initializers.Constant(mean_age), name="age")(x)
    gender = layers.Dense(1, activation="sigmoid", name="gender")(x)
    return keras.Model(inputs, {"age": age, "gender": gender}, name="age_gender")
