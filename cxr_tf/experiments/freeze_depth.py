"""Freeze depth: the same ResNet50 frozen up to each listed layer index (seed 004, SPEC S4).

The seed froze ``keras.applications.ResNet50`` (ImageNet) up to layer 144
(``conv5_block1_1_bn``: only conv5 and the head train) and found it better than
freezing up to 114 (``conv4_block4_1_bn``), which trains more parameters and overfit.
Here every freeze point is trained at each learning rate (around 1e-3: transfer
learning uses about a tenth of the base rate) with the same patient-level split, seed
and initial weights.

Reported per cell: trainable / non-trainable parameter counts, the train - validation
gap per epoch (AUC and loss: overfitting), final test metrics, and overlaid learning
curves (``plots/learning_curves.png``; TensorBoard runs ``tensorboard/f<idx>_lr<lr>/``
side by side). Re-running the same command reopens the same run folder and reuses every
finished cell (:mod:`cxr_tf.training.sweep`).

Pretrained weights: ``--weights imagenet`` (Keras' loader; needs a download or the file
in ``~/.keras/models``), ``--weights PATH`` (a Keras ResNet50 no-top weights file) or
``--weights run:DIR`` (the backbone of one of your earlier cxr_tf runs, e.g. a ResNet50
trained on another CXR source) or ``--weights preset:NAME`` (a pretrained preset's trunk). Freezing random weights only freezes noise, so
``--weights none`` is refused unless ``--allow-random-frozen``.

Commands::

    python -m cxr_tf.experiments.freeze_depth --data-dir $CXR_DATA_DIR/kermany224 --weights imagenet
    python -m cxr_tf.experiments.pneumonia_freeze --compare-freeze 114,144 --data-dir ... --weights imagenet  # one lr
    # what we ran on 2 CPU cores (experiments/results/freeze_depth.md): ResNet50 pretrained on
    # covid19_radiography (COVID vs normal adults, a source disjoint from Kermany), then
    python -m cxr_tf.experiments.freeze_depth --data-dir $CXR_DATA_DIR/kermany224 \\
        --weights run:runs/pretrain/pneumonia_freeze/<stamp> --image-size 64 --max-images 1500 \\
        --epochs 6 --lrs 3e-4,1e-3,3e-3 --bn-momentum 0.9 --augment light
"""
from __future__ import annotations

import dataclasses
import sys

from cxr_tf.training.config import opt, parse_config
from cxr_tf.training.task import ClassifierConfig


@dataclasses.dataclass
class FreezeDepthConfig(ClassifierConfig):
    experiment: str = "freeze_depth"
    freeze_points: str = opt("114,144", "comma list of freeze_until indices to compare")
    lrs: str = opt("1e-3,3e-4,1e-4", "comma list of learning rates, one training per freeze point and lr")
    weights: str = "imagenet"
    early_stopping: int = 0  # the per-epoch gap is the point: train every epoch
    n_boot: int = opt(200, "bootstrap resamples for confidence intervals")
    export: bool = False

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size, self.epochs, self.lrs = 32, 2, "1e-3"
        self.synthetic_n, self.n_boot, self.bn_momentum = 60, 20, 0.9

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        try:
            pts, lrs = self.freeze_list, self.lr_list
        except ValueError:
            raise CXRConfigError(f"--freeze-points / --lrs must be comma-separated numbers; got "
                                 f"{self.freeze_points!r}, {self.lrs!r}") from None
        from cxr_tf.training.sweep import check_freeze_points

        check_freeze_points(self, pts, lrs)

    @property
    def freeze_list(self) -> list[int]:
        from cxr_tf.training.sweep import parse_list

        return parse_list(self.freeze_points, int)

    @property
    def lr_list(self) -> list[float]:
        from cxr_tf.training.sweep import parse_list

        return sorted(set(parse_list(self.lrs, float)), reverse=True)


def parse(argv=None) -> FreezeDepthConfig:
    return parse_config(FreezeDepthConfig, argv, description=__doc__.split("\n")[0])


def run(cfg: FreezeDepthConfig) -> dict:
    from cxr_tf.training.sweep import compare_freeze

    return compare_freeze(cfg, cfg.freeze_list, cfg.lr_list, n_boot=cfg.n_boot)


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
