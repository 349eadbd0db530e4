"""cxr_tf: chest X-ray deep learning with Keras / TensorFlow.

Importing the package sets up its logging (``[cxr_tf] ...`` lines, :mod:`cxr_tf.log`) and,
before TensorFlow is imported, hides TensorFlow's C++ start-up lines; every entry point
(``python -m cxr_tf.experiments.X``, the ``cxr-tf`` script) imports it first.
"""
from cxr_tf import log as _log

_log.install_tensorflow_import_filter()
_log.install_handler()
