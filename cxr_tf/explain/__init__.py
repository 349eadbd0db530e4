"""Explanations: Grad-CAM, Grad-CAM++ and (Faster) Score-CAM behind one interface,
overlays, TensorBoard logging and the border-band shortcut check."""
from cxr_tf.explain.cam import (METHODS, MIN_GRID, Explainer, border_mass, choose_target_layer, explain,
                                feature_map_layers, layer_grid, map_warnings, target_layer, uniform_border_share)
from cxr_tf.explain.loading import KERAS_MODEL_FILE, attach_keras_model, load_images, load_keras_model
from cxr_tf.explain.overlay import (display_gray, gray_rgb, heatmap_rgb, overlay_grid, overlay_rgb, resize_map,
                                    save_explanation, save_triplet)
from cxr_tf.explain.report import border_report, cam_check, cam_sample, log_overlays_to_tensorboard

__all__ = [
    "KERAS_MODEL_FILE", "METHODS", "cam_check", "cam_sample", "MIN_GRID", "Explainer", "choose_target_layer", "display_gray", "layer_grid",
    "map_warnings", "resize_map", "save_explanation", "attach_keras_model", "border_mass", "border_report", "explain",
    "feature_map_layers", "gray_rgb", "heatmap_rgb", "load_images", "load_keras_model", "log_overlays_to_tensorboard",
    "overlay_grid", "overlay_rgb", "save_triplet", "target_layer", "uniform_border_share",
]
