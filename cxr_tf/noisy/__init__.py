"""Training with noisy multi-label CXR labels (SPEC S1, seed 001), a feature package beside
:mod:`cxr_tf.ssl`: experiments use it through :mod:`cxr_tf.training`'s flow.

* :mod:`~cxr_tf.noisy.uncertainty`: uncertainty policies for text-mined labels (U-Ignore,
  U-Zeros, U-Ones, LSR; blank handling) -> ``(targets, weights)``;
* :mod:`~cxr_tf.noisy.losses`: masked and MentorNet-weighted binary cross-entropy;
* :mod:`~cxr_tf.noisy.methods`: the disease hierarchy (conditional training, consistent
  inference), masked MixUp, relabelling with the best model.
"""
from cxr_tf.noisy.losses import MaskedBinaryCrossentropy, MentorNetBinaryCrossentropy
from cxr_tf.noisy.methods import (
    CHEXPERT_HIERARCHY,
    hierarchical_probabilities,
    make_masked_mixup,
    relabel,
    restrict_hierarchy,
)
from cxr_tf.noisy.uncertainty import UncertaintyPolicy, pack, unpack

__all__ = [
    "CHEXPERT_HIERARCHY",
    "MaskedBinaryCrossentropy",
    "MentorNetBinaryCrossentropy",
    "UncertaintyPolicy",
    "hierarchical_probabilities",
    "make_masked_mixup",
    "pack",
    "relabel",
    "restrict_hierarchy",
    "unpack",
]
