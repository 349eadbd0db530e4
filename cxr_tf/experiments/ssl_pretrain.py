"""Self-supervised restoration pretraining (SPEC S0, Models Genesis): UNet+CBAM restorer.

Corrupt an unlabeled CXR (flip, local pixel shuffling, Bezier intensity, in/out-painting;
``cxr_tf.ssl.transforms``), learn to restore it with 1 - SSIM; keep the encoder.

Commands::

    # every CXR source found under $CXR_DATA_DIR (labels ignored), synthetic CXRs when none
    python -m cxr_tf.experiments.ssl_pretrain
    # chosen sources; "@train" keeps only the training patients of the 8:1:1 patient split
    # that the fine-tuning uses (the same --split / --seed), so no test image is seen
    python -m cxr_tf.experiments.ssl_pretrain --sources kermany224@train,nih_chestxray14/nih1000_64 \\
        --image-size 64 --depth 3 --width 16 --epochs 6
    python -m cxr_tf.experiments.ssl_pretrain --smoke           # tests

Writes ``runs/ssl_pretrain/<UTC timestamp>/``: config, ``pool.csv`` (every image used),
TensorBoard (loss, SSIM, PSNR and a grid original / corrupted / restored each epoch),
checkpoints (resumable: ``--resume``), ``metrics.json``, ``report.md`` and
``ssl_encoder/`` (``encoder.weights.h5`` + ``ssl_encoder.json``: input size, channels,
normalisation, transform settings), which a classifier loads with ``--init ssl:<folder>``.
A killed run continues at its last committed epoch when started again with ``--run-dir DIR``
(or ``--resume``). ``--strategy multi_worker`` (TF_CONFIG, ``--run-dir`` on shared storage)
trains with the shared custom loop (:mod:`cxr_tf.training.distributed`, best epoch by
validation SSIM); only the chief writes the encoder, metrics and report. The machinery is
:mod:`cxr_tf.ssl.pretrain`.

Results (2-core AMD EPYC VM, run pinned to 1 core, TF 2.21; ``experiments/results/ssl.md``):
3,744 unlabeled images (kermany224 training patients, NIH, COVID sets) at 64 px, depth 3,
width 16, ~11 images/s; 2 epochs in 12 min 53 s (stopped at the 15-minute run limit, encoder
written with ``--export-from``): validation SSIM corrupted 0.138 -> restored 0.603, PSNR
9.4 -> 14.7 dB.
"""
from __future__ import annotations

import sys

# The pretraining lives in cxr_tf.ssl.pretrain (shared with ssl_finetune's smoke pretraining).
from cxr_tf.ssl.pretrain import (  # noqa: F401  (this experiment's public names)
    AUTO_SOURCES,
    NORMALISATION,
    SSLPretrainConfig,
    evaluate_restoration,
    export_from,
    finish,
    image_pool,
    load_source,
    make_grid_logger,
    parse,
    restoration_grid,
    run,
)


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    cfg = parse(argv)
    return run_main(lambda: export_from(cfg.export_from) if cfg.export_from else run(cfg))


if __name__ == "__main__":
    sys.exit(main())
