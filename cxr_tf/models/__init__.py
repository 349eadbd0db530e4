"""Models: a registry of backbones and the flat functional CXRClassifier."""
from cxr_tf.models.classifier import CXRClassifier, parse_head
from cxr_tf.models.presets import PresetMetadata, list_presets, load_preset, save_preset
from cxr_tf.models.registry import (
    BackboneSpec,
    get_backbone,
    list_backbones,
    register_backbone,
    register_backbone_family,
)

# The built-in backbone families register themselves into the registry on import.
from cxr_tf.models import applications, resnet18, squeezenet, tiny, unet_cbam, vit  # noqa: E402,F401  isort: skip


def build_model(backbone: str = "resnet50", **kwargs) -> CXRClassifier:
    """Build a registered classifier by backbone name (see :class:`CXRClassifier`).

    ``weights`` takes any form of :data:`cxr_tf.models.weights.WEIGHTS_FORMS`, e.g.
    ``weights="preset:NAME"`` (trunk from the preset; the head too when the classes match).
    ``weights="ssl:<path>"`` with ``backbone="unet_cbam_encoder"`` takes the encoder size
    (``unet_cbam_encoder_d{depth}w{width}``) from the SSL artifact's metadata.
    """
    if backbone == "unet_cbam_encoder" and str(kwargs.get("weights") or "").startswith("ssl:"):
        from cxr_tf.models.unet_cbam import ssl_backbone_name

        backbone = ssl_backbone_name(kwargs["weights"])
    return CXRClassifier(backbone=backbone, **kwargs)
