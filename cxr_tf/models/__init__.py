"""Models: a registry of backbones and the flat functional CXRClassifier."""
from cxr_tf.models.classifier import CXRClassifier, parse_head
from cxr_tf.models.registry import BackboneSpec, get_backbone, list_backbones, register_backbone


def build_model(backbone: str = "resnet50", **kwargs) -> CXRClassifier:
    """Build a registered classifier by backbone name (see :class:`CXRClassifier`)."""
    return CXRClassifier(backbone=backbone, **kwargs)
