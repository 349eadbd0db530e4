"""The training graph's image decoder, and which files it may be handed.

The decoding contract of cxr_tf: an image either decodes identically on every path
(validation, training, evaluation, export warm-up, explain) or validation refuses it
with a named cause. Two ways were measured on 200 kermany224 JPEGs (224 px, 2-core
machine, 2026-12-04):

* validate PNG/JPEG with the graph's own op (``tf.io.decode_image``, run eagerly):
  0.44 ms per image (Pillow's decode + ``convert("L")`` of the same files: 1.40 ms);
* convert every file once into the decode cache (Pillow decode + 16-bit PNG write):
  14.7 ms per image, plus the disk.

End to end on 600 kermany224 JPEGs (same machine, loaded): validation by
:func:`cxr_tf.io.graph_input` (header checks, JPEG scan check, EXIF probe, TF decode)
0.92 ms per file; :func:`cxr_tf.io.read_image` (Pillow, same checks) 0.83 ms.

So PNG and JPEG files that ``tf.io.decode_image`` decodes as the graph will are
validated by that very op and handed to the graph unchanged; everything the graph
cannot decode the same way (BMP, GIF, TIFF, DICOM, NPY, CMYK/YCCK JPEG, 16-bit colour
PNG, JPEGs with an EXIF rotation) is decoded once by :func:`cxr_tf.io.read_image` and
cached as a 16-bit gray PNG, which the graph then decodes exactly. A file only reaches
the graph after one of the two proved it decodes.

TensorFlow is imported lazily: listing and sniffing never need it.
"""
from __future__ import annotations

import re

#: Formats whose files may reach the graph decoder unconverted.
GRAPH_FORMATS = frozenset({"png", "jpeg"})
#: Channels the graph asks the decoder for (grayscale).
GRAPH_CHANNELS = 1


def tf_decode(contents):
    """The one decode op of the graph: encoded bytes -> uint16 ``(H, W, 1)`` tensor.

    :func:`cxr_tf.data.preprocess.decode_image` calls this inside tf.data and the
    exported signatures; validation calls it eagerly, so both use the same code.
    """
    import tensorflow as tf

    return tf.io.decode_image(contents, channels=GRAPH_CHANNELS, dtype=tf.uint16, expand_animations=False)


def clean_tf_message(e: BaseException) -> str:
    """A TF error message without its graph noise (``{{function_node ...}}``, ``[Op:...]``)."""
    msg = str(getattr(e, "message", e))
    return re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", msg).strip()
