"""Image and DICOM reading outside the TF graph: format sniffing, decoding,
validation and the decode-once PNG cache for DICOM.

Every failure is a :class:`cxr_tf.errors.CXRImageError` (``CXRDicomError`` for
DICOM) naming the file and the cause.
"""
from ._common import DEFAULT_MAX_PIXELS, display_name
from .cache import cache_key, cache_path, to_png_cache
from .dicom import SAFE_DICOM_TAGS, dicom_metadata_safe, read_dicom
from .formats import SUPPORTED_FORMATS, TF_DECODABLE_FORMATS, sniff_format
from .images import read_image
from .graph import GRAPH_FORMATS, tf_decode
from .validate import CSV_ENCODING, graph_input, prepare_graph_inputs, read_skip_list, validate_images, write_skip_list

__all__ = [
    "CSV_ENCODING",
    "GRAPH_FORMATS",
    "cache_path",
    "display_name",
    "graph_input",
    "prepare_graph_inputs",
    "read_skip_list",
    "tf_decode",
    "DEFAULT_MAX_PIXELS",
    "SAFE_DICOM_TAGS",
    "SUPPORTED_FORMATS",
    "TF_DECODABLE_FORMATS",
    "cache_key",
    "dicom_metadata_safe",
    "read_dicom",
    "read_image",
    "sniff_format",
    "to_png_cache",
    "validate_images",
    "write_skip_list",
]
