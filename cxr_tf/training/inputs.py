"""The training input pipeline from a config: one definition for the Keras fit, the
multi-worker loop and every experiment (``cxr_tf.training.flow`` re-exports it)."""
from __future__ import annotations

from cxr_tf.datasets import CXRDataset


def train_pipeline(cfg, train_ds: CXRDataset):
    """The training pipeline. Called again for anything that only looks at training
    batches (the TensorBoard sample grid): with ``reshuffle_each_iteration`` every
    iterator over ONE dataset object draws from a shared seed generator, so a second
    iterator on the training object would change the batches training sees (and make
    runs, resumed runs and workers disagree)."""
    from cxr_tf.data import build_pipeline

    balance = cfg.balance if cfg.balance == "oversample" else "none"
    return build_pipeline(train_ds, cfg.image_size, cfg.batch_size, training=True, policy=cfg.augment,
                          balance=balance, seed=cfg.seed)
