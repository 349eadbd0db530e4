"""Compile and fit: optimizer and schedule from config, the standard callbacks."""
from __future__ import annotations

import keras
import numpy as np

from cxr_tf.errors import CXRConfigError
from cxr_tf.training.config import OptimizerConfig
from cxr_tf.training.precision import jit_compile_arg


def make_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int):
    """Constant lr, exponential decay per epoch (seed 002's ExponentialLR), or cosine with warm-up."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            cfg.lr, decay_steps=max(1, steps_per_epoch), decay_rate=cfg.decay_rate, staircase=True
        )
    if cfg.schedule == "cosine":
        total = max(1, steps_per_epoch * epochs)
        warm = min(total - 1, steps_per_epoch * cfg.warmup_epochs)
        if warm > 0:
            return keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=total - warm, warmup_target=cfg.lr, warmup_steps=warm
            )
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=total)
    raise CXRConfigError(f"unknown schedule {cfg.schedule!r}")


def make_optimizer(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    lr = make_schedule(cfg, steps_per_epoch, epochs)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum)
    raise CXRConfigError(f"unknown optimizer {cfg.optimizer!r}")


def compile_classifier(model: keras.Model, opt_cfg: OptimizerConfig, steps_per_epoch: int, epochs: int,
                       label_smoothing: float = 0.0, multilabel: bool = False) -> None:
    """Cross-entropy, accuracy and AUC (``auc``: what checkpoints and early stopping watch).

    ``opt_cfg.jit_compile`` (``--jit-compile``) goes to ``model.compile``; a model built
    under the ``mixed_float16`` policy gets Keras' ``LossScaleOptimizer`` there
    (:mod:`cxr_tf.training.precision`), and the loss computes in float32.
    """
    if multilabel:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc", multi_label=True)]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    model.compile(optimizer=make_optimizer(opt_cfg, steps_per_epoch, epochs), loss=loss, metrics=metrics,
                  jit_compile=jit_compile_arg(opt_cfg.jit_compile))
    if opt_cfg.jit_compile and not model.jit_compile:
        # Keras turns XLA off by itself when TF op determinism is on (--deterministic): say so
        import logging

        logging.getLogger("cxr_tf.training").warning(
            "warning: --jit-compile ignored: Keras does not XLA-compile while TF op determinism is enabled "
            "(--deterministic, or enabled earlier in this process)")


def predict(model: keras.Model, dataset) -> np.ndarray:
    return np.asarray(model.predict(dataset, verbose=0))
