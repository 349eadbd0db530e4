"""``cxr-tf``: the command line.

    cxr-tf train [--help]                     list the experiments, one line each
    cxr-tf train pneumonia_freeze [flags]     run an experiment (same as python -m cxr_tf.experiments.NAME)
    cxr-tf evaluate --model DIR --data-dir DIR [--format ...]
    cxr-tf augment-grid --policy s2 IMAGE... --out grid.png
    cxr-tf distortion-grid IMAGE --out grid.png   every distortion at three severities (SPEC S2)
    cxr-tf explain --model saved_models/NAME/VERSION IMAGE... [--method gradcam|gradcam++|scorecam]
    cxr-tf inspect saved_models/NAME/VERSION [--raw]  classes, image size, threshold, signatures
                                              (--raw: saved_model_cli show --all)
    cxr-tf export --model RUN_DIR|saved_models/NAME/VERSION|preset:NAME --format savedmodel|onnx|tflite [--quantize ...]
    cxr-tf info                               backbones, policies, experiments
    cxr-tf presets list | show NAME | save --run RUN --name NAME   pretrained presets (cxr_tf.cli.preset)
    cxr-tf predict --model preset:NAME|saved_models/NAME/VERSION|RUN IMAGES_OR_DIR --out predictions.csv
    cxr-tf judge serve|add-rater|export ...   rater app for the perceptual test set (cxr_tf.judge.cli)
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from cxr_tf.errors import CXRError
from cxr_tf.log import add_verbosity_flags, set_verbosity

logger = logging.getLogger("cxr_tf.cli")


#: Named augmentation policies and extras, for --help without importing TensorFlow
#: (tests/test_cli.py checks them against cxr_tf.data.augment's registries).
POLICY_NAMES = ("none", "light", "moderate", "s2", "strong")
EXTRA_NAMES = ("clahe", "bc", "gamma", "elastic", "mixup", "cutmix", "flip")


def _experiments() -> list[str]:
    import cxr_tf.experiments as ex

    return sorted(m.name for m in pkgutil.iter_modules(ex.__path__) if m.name not in ("common", "sweep"))


def _experiment_summaries() -> dict[str, str]:
    """Each experiment's one-line description: its module docstring's first line.

    Read from the source (``ast``), not imported: importing an experiment loads TensorFlow,
    and ``--help`` should answer at once.
    """
    import ast

    import cxr_tf.experiments as ex

    out = {}
    for name in _experiments():
        path = os.path.join(ex.__path__[0], f"{name}.py")
        try:
            with open(path, encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
        except (OSError, SyntaxError):
            doc = ""
        out[name] = doc.strip().splitlines()[0].rstrip(".").replace("``", "") if doc.strip() else ""
    return out


def _experiments_text() -> str:
    rows = _experiment_summaries()
    width = max(map(len, rows))
    return ("usage: cxr-tf train EXPERIMENT [flags]   (cxr-tf train EXPERIMENT --help: its flags)\n\n"
            "experiments:\n" + "\n".join(f"  {n:<{width}}  {d}" for n, d in rows.items()))


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = []  # cxr-tf --quiet CMD ...: taken off so that CMD comes first
    while argv[:1] in (["--quiet"], ["--verbose"]):
        lead.append(argv.pop(0))
    p = argparse.ArgumentParser(prog="cxr-tf", description="cxr_tf: chest X-ray deep learning with Keras/TensorFlow")
    add_verbosity_flags(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    # add_help=False: ``train EXPERIMENT --help`` belongs to the experiment's own parser
    t = sub.add_parser("train", help="run an experiment (cxr-tf train --help lists them)", add_help=False)
    t.add_argument("experiment", nargs="?")
    from cxr_tf.cli import evaluate as ev

    ev.add_arguments(sub.add_parser("evaluate", help="score an exported model on a dataset"))
    g = sub.add_parser("augment-grid", help="write a PNG grid of augmented images")
    g.add_argument("images", nargs="+")
    g.add_argument("--policy", default="s2", help=f"a named policy ({', '.join(POLICY_NAMES)}), optionally + extras "
                   f"({', '.join(EXTRA_NAMES)}): e.g. s2, moderate+clahe+mixup")
    g.add_argument("--out", default="augment_grid.png")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--n", type=int, default=5)
    g.add_argument("--seed", type=int, default=0)
    dg = sub.add_parser("distortion-grid", help="PNG grid: every distortion at three severities on one image")
    dg.add_argument("image")
    dg.add_argument("--out", default="distortion_grid.png")
    dg.add_argument("--image-size", type=int, default=128)
    dg.add_argument("--severities", default="0.25,0.5,1.0")
    from cxr_tf.distortions import TRADITIONAL

    dg.add_argument("--distortions", default="all", help=f"all, or a comma list of: {', '.join(TRADITIONAL)}")
    dg.add_argument("--seed", type=int, default=0)
    from cxr_tf.explain import command as explain_cmd

    explain_cmd.add_arguments(sub.add_parser("explain", help="CAM heat maps and overlays for image files"))
    i = sub.add_parser("inspect", help="an export's classes, image size, threshold and signatures",
                       description="Print an export's class names, image size, decision threshold and rule, and "
                                   "its signatures' inputs and outputs.")
    i.add_argument("path", help="saved_models/<name>/<version>")
    i.add_argument("--raw", action="store_true", help="print saved_model_cli show --all instead")
    from cxr_tf.export import portable

    portable.add_arguments(sub.add_parser("export", help="export to SavedModel, ONNX or TFLite, verified by its runtime"))
    sub.add_parser("info", help="list backbones, augmentation policies and experiments")
    from cxr_tf.judge import cli as judge_cli

    judge_cli.add_arguments(sub.add_parser("judge", help="rater app: serve, add-rater, export (needs the judge extra)"))
    from cxr_tf.cli import predict as predict_cmd, preset as preset_command

    preset_command.add_arguments(sub.add_parser("presets", help="list, show or save pretrained presets"))
    predict_cmd.add_arguments(sub.add_parser("predict", help="probabilities and decisions for unlabelled images"))

    for name, sp in sub.choices.items():  # cxr-tf --quiet CMD and cxr-tf CMD --quiet alike
        if name != "train":  # an experiment's own parser has the flags (TrainConfig)
            add_verbosity_flags(sp, suppress_defaults=True)
    if argv[:1] == ["train"] and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        # the experiment list is the help: exit 0 when asked for, 2 when the experiment is missing
        print(_experiments_text(), file=sys.stdout if len(argv) > 1 else sys.stderr)
        if len(argv) == 1:
            print("cxr-tf train: error: name an experiment", file=sys.stderr)
            return 2
        return 0
    if argv[:1] == ["train"]:
        a, rest = p.parse_known_args(lead + argv)
    else:
        a, rest = p.parse_args(lead + argv), []
    set_verbosity(a.quiet, a.verbose)
    try:
        if a.cmd == "train":
            if a.experiment not in _experiments():
                print(_experiments_text(), file=sys.stderr)
                print(f"cxr-tf train: error: unknown experiment {a.experiment!r}", file=sys.stderr)
                return 2
            # the experiment's parser sets the level again: cxr-tf --quiet train X == cxr-tf train X --quiet
            return importlib.import_module(f"cxr_tf.experiments.{a.experiment}").main(rest + lead)
        if a.cmd == "evaluate":
            ev.run(a)
        elif a.cmd == "judge":
            return judge_cli.run(a)
        elif a.cmd == "presets":
            preset_command.run(a)
        elif a.cmd == "predict":
            predict_cmd.run(a)
        elif a.cmd == "explain":
            explain_cmd.run(a)
        elif a.cmd == "augment-grid":
            _augment_grid(a)
        elif a.cmd == "distortion-grid":
            _distortion_grid(a)
        elif a.cmd == "inspect":
            from cxr_tf.export import describe_export, inspect_with_cli

            print(inspect_with_cli(a.path) if a.raw else describe_export(a.path))
        elif a.cmd == "export":
            portable.run(a)
        elif a.cmd == "info":
            from cxr_tf.data import POLICIES
            from cxr_tf.data.augment import EXTRAS
            from cxr_tf.models import list_backbones

            print("backbones:  ", ", ".join(list_backbones()))
            print("augmentation:", ", ".join(POLICIES), "| extras (policy+extra):", ", ".join(EXTRAS))
            print("experiments:", ", ".join(_experiments()))
    except CXRError as e:
        print(f"cxr_tf: error: {e}", file=sys.stderr)
        return 2
    return 0


def _augment_grid(a) -> None:
    import numpy as np
    import tensorflow as tf

    from cxr_tf.data import augmentation_grid, prepare_image
    from cxr_tf.io import read_image

    imgs = []
    for path in a.images:
        arr = read_image(path)  # any supported format, with the project's errors
        png = tf.io.encode_png(np.clip((arr - arr.min()) / max(np.ptp(arr), 1e-6) * 65535, 0, 65535).astype(np.uint16)[..., None])
        imgs.append(prepare_image(png, a.image_size).numpy())
    augmentation_grid(np.stack(imgs), a.policy, a.out, n_aug=a.n, seed=a.seed)
    logger.info(f"wrote {a.out}")


def _distortion_grid(a) -> None:
    from cxr_tf.distortions.grid import distortion_grid
    from cxr_tf.perceptual.testset import _to_unit
    from cxr_tf.io import read_image

    img = _to_unit(read_image(a.image), a.image_size)
    names = None if a.distortions == "all" else [n.strip() for n in a.distortions.split(",")]
    sev = [float(v) for v in a.severities.split(",")]
    distortion_grid(img, a.out, names=names, severities=sev, seed=a.seed, title=os.path.basename(a.image))
    logger.info(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
