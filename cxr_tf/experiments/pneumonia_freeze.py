"""Pediatric pneumonia, 3 classes, with layer-indexed freezing (seed 004), from the project's preset.

The seed's setting (SPEC S4): Kermany chest X-rays, bacterial 0 / viral 1 / normal 2,
a patient-level 8:1:1 split, ImageNet ResNet50 frozen up to layer index 144
(keras.applications numbering: 144 = ``conv5_block1_1_bn``) with the "extra FC" head
GAP-Dense(256)-Dense(128)-Dense(3), Adam lr 1e-4, batch 32, 224 px: ``--weights imagenet``.

Default (``--weights auto``): no ImageNet download is possible offline, so the run starts
from the embedded in-domain preset ``cxr_pneumonia_unet128`` (``cxr_tf.experiments.train_preset``):
its UNet+CBAM encoder at 128 px with the first two encoder stages frozen (``--freeze-until
auto`` = ``enc3_conv1``, the seed's idea of training only the last stage) and the seed's head
and optimiser. ``--weights none`` trains from scratch with nothing frozen; freezing random
layers is refused unless ``--allow-random-frozen``.

Commands::

    # embedded synthetic CXRs (no data needed), a demo that finishes in minutes on 2 CPU cores
    python -m cxr_tf.experiments.pneumonia_freeze

    # real data: the Kermany chest_xray folder (or kermany224)
    python -m cxr_tf.experiments.pneumonia_freeze --data-dir $CXR_DATA_DIR/kermany224
    python -m cxr_tf.experiments.pneumonia_freeze --data-dir DIR --classes pneumonia   # 2 classes
    # the seed's exact model (needs the ImageNet download)
    python -m cxr_tf.experiments.pneumonia_freeze --data-dir DIR --weights imagenet
    # freeze depth comparison, e.g. 114 vs 144: this configuration once per point, in one run folder
    # (cxr_tf.training.sweep.compare_freeze; freeze_depth adds a learning-rate grid)
    python -m cxr_tf.experiments.pneumonia_freeze --compare-freeze 114,144 --data-dir DIR --weights imagenet

Writes ``runs/pneumonia_freeze/<UTC timestamp>/`` (config, splits, TensorBoard, metrics,
report, plots, checkpoints) and exports ``saved_models/<export-name>/<version>/``.

Results (2-core AMD EPYC VM, no GPU, TF 2.21), details in ``experiments/results/pneumonia_freeze.md``
and ``experiments/results/presets.md``:

* no arguments (synthetic demo, from the preset, 128 px, 5 epochs): three runs gave the same
  test accuracy 0.769 [0.654, 0.855] and macro AUC 0.996 [0.989, 1.000] on 65 images, 75-93 s each;
* ``--data-dir kermany224 --classes pneumonia`` (from the preset, 6 epochs): test accuracy
  0.966, AUC 0.995 on the preset's own held-out kermany224 test patients;
* from scratch (``--weights none``) at 64 px, 4 epochs: 3-class accuracy 0.747, macro AUC 0.880.
"""
from __future__ import annotations

import dataclasses
import sys

from cxr_tf.training.config import opt, parse_config
from cxr_tf.training.task import DEFAULT_PRESET, PRESET_FREEZE, ClassifierConfig, ClassifierTask  # noqa: F401

# Without --data-dir: the synthetic demo, sized to finish in minutes on 2 CPU cores.
# freeze_until=0 because no pretrained weights exist here and freezing randomly
# initialised layers only freezes noise (the seed froze ImageNet layers); BN momentum
# 0.9 so the moving statistics catch up within ~150 steps; lesions at difficulty 0.3
# and no augmentation so ResNet50 from scratch learns within 5 epochs (measured:
# validation AUC 0.56 -> 0.93 over 5 epochs on this setting).
DEMO_OVERRIDES = {"image_size": 64, "epochs": 5, "batch_size": 16, "early_stopping": 0,
                  "lr": 1e-3, "bn_momentum": 0.9, "augment": "none", "synthetic_n": 600,
                  "synthetic_difficulty": 0.3}


@dataclasses.dataclass
class PneumoniaFreezeConfig(ClassifierConfig):
    """The seed's task (3 Kermany classes, the extra-FC head, Adam 1e-4) from the preset."""

    experiment: str = "pneumonia_freeze"
    compare_freeze: str = opt("", "comma list of --freeze-until points (e.g. 114,144): train this configuration "
                              "once per point in one run folder and compare trainable parameters, test AUC and "
                              "the train-validation gap per epoch (cxr_tf.training.sweep.compare_freeze); "
                              "empty: one training")


def parse(argv=None) -> PneumoniaFreezeConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(PneumoniaFreezeConfig, argv, description=__doc__.split("\n")[0])
    if not cfg.data_dir and not cfg.smoke:
        # No data given: the synthetic demo, sized to finish in minutes on a laptop CPU.
        given = {a.split("=")[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
        for k, v in DEMO_OVERRIDES.items():
            if k == "image_size" and str(cfg.weights).startswith("preset:"):
                continue  # a preset trunk runs at the size it was trained at
            if k not in given:
                setattr(cfg, k, v)
    return cfg


def run(cfg: PneumoniaFreezeConfig) -> dict:
    """One training through the task layer, or the freeze comparison with ``--compare-freeze``."""
    if cfg.compare_freeze:
        from cxr_tf.training.sweep import compare_freeze, parse_list

        return compare_freeze(cfg, parse_list(cfg.compare_freeze, int), [cfg.lr])
    return ClassifierTask(cfg).run()


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
