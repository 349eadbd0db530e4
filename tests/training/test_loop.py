import numpy as np
import keras
import pytest

from cxr_tf.training.config import OptimizerConfig
from cxr_tf.training.loop import make_optimizer, make_schedule


def test_schedules():
    assert make_schedule(OptimizerConfig(lr=1e-4), 10, 5) == 1e-4
    exp = make_schedule(OptimizerConfig(lr=0.1, schedule="exponential", decay_rate=0.5), 10, 5)
    assert np.isclose(float(exp(0)), 0.1) and np.isclose(float(exp(10)), 0.05) and np.isclose(float(exp(25)), 0.025)
    cos = make_schedule(OptimizerConfig(lr=0.1, schedule="cosine", warmup_epochs=1), 10, 5)
    assert float(cos(0)) < 0.02 and np.isclose(float(cos(10)), 0.1, atol=1e-3) and float(cos(50)) < 1e-3


@pytest.mark.parametrize("name,cls", [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                                      ("sgd", keras.optimizers.SGD)])
def test_optimizers(name, cls):
    opt = make_optimizer(OptimizerConfig(optimizer=name, lr=0.01, momentum=0.8), 10, 2)
    assert isinstance(opt, cls)
    if name == "sgd":
        assert opt.momentum == 0.8
