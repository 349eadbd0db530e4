"""Custom Keras layers (portable: keras.layers / keras.ops only)."""
from cxr_tf.layers.preprocessing import BackboneInput
from cxr_tf.layers.transformer import PatchEmbedding, TokensToGrid
from cxr_tf.layers.cbam import ChannelAttention, SpatialAttention, cbam_block
