"""Training: config, strategy, callbacks, run folder, fit."""
from cxr_tf.training.config import OptimizerConfig, TrainConfig, parse_config
from cxr_tf.training.run import RunDir, create_run_dir
from cxr_tf.training.strategy import make_strategy
