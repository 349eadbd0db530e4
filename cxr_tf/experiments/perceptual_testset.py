"""Build a perceptual-similarity test set of chest X-rays in the BAPPS layout (SPEC S2).

From real CXRs: 2AFC triplets and JND pairs as 8-bit PNGs in the BAPPS layout, with
``manifest.csv``, in two subsets (``traditional`` distortions; ``cnn``: a denoising
autoencoder and three distorting GANs trained on other patients' CXRs), distortion types
balanced; the same seed gives byte-identical files. The layout and the balance rules:
:mod:`cxr_tf.perceptual.testset`, which builds it.

Judgments (``judge/`` / ``same/``) are not made here: they come from the rater
app (``cxr-tf judge``) and are scored by ``cxr_tf.experiments.perceptual_agreement``.

Commands::

    python -m cxr_tf.experiments.perceptual_testset --smoke                 # synthetic CXRs, seconds
    python -m cxr_tf.experiments.perceptual_testset --data-dir $CXR_DATA_DIR/kermany224 --out-dir DIR

Result (2-core AMD EPYC VM, pinned to 1 core): ``--data-dir kermany224 --image-size 64 --n-2afc 300
--n-jnd 150 --n-source 150`` wrote 900 items (2 subsets) in 341 s, of which the DAE took 73 s
and the three GANs 62-85 s each; see ``experiments/results/perceptual_agreement.md``.
"""
from __future__ import annotations

import sys

from cxr_tf.perceptual.testset import GAN_VARIANTS, PerceptualTestsetConfig, run  # noqa: F401  (the experiment's parts)


def main(argv=None) -> int:
    from cxr_tf.errors import run_main
    from cxr_tf.training.config import parse_config

    cfg = parse_config(PerceptualTestsetConfig, argv, description=__doc__.split("\n")[0])
    return run_main(run, cfg)


if __name__ == "__main__":
    sys.exit(main())
