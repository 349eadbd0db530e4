"""Self-supervised pretraining (SPEC S0): Models Genesis corruptions and restoration losses."""
from cxr_tf.ssl.transforms import GenesisConfig, generate_pair, make_pair_dataset

__all__ = ["GenesisConfig", "generate_pair", "make_pair_dataset"]
