"""Explanations: Grad-CAM, Grad-CAM++ and (Faster) Score-CAM behind one interface,
overlays, TensorBoard logging and the border-band shortcut check."""
from cxr_tf.explain.cam import (METHODS, Explainer, border_mass, explain, feature_map_layers, target_layer,
                                uniform_border_share)
from cxr_tf.explain.loading import KERAS_MODEL_FILE, attach_keras_model, load_images, load_keras_model
from cxr_tf.explain.overlay import gray_rgb, heatmap_rgb, overlay_grid, overlay_rgb, save_triplet
from cxr_tf.explain.report import border_report, log_overlays_to_tensorboard

__all__ = [
    "KERAS_MODEL_FILE", "METHODS", "Explainer", "attach_keras_model", "border_mass", "border_report", "explain",
    "feature_map_layers", "gray_rgb", "heatmap_rgb", "load_images", "load_keras_model", "log_overlays_to_tensorboard",
    "overlay_grid", "overlay_rgb", "save_triplet", "target_layer", "uniform_border_share",
]
