"""tf.data pipelines, preprocessing and augmentation."""
from cxr_tf.data.augment import POLICIES, AugmentPolicy, apply_policy, augmentation_grid, get_policy
from cxr_tf.data.pipeline import Pipeline, as_arrays, build_pipeline, class_weights, image_dataset, prepare_items
from cxr_tf.data.preprocess import prepare_float_batch, prepare_image, resize_with_pad, scale_per_image
