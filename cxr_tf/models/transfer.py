"""Backbone weights from one of your own earlier runs (``--weights run:<run folder>``).

No ImageNet weights can be downloaded on an offline machine; a model trained on a
different in-domain source (or SSL-pretrained) is the next best start. This copies
the backbone layers' weights, by layer name, from the best checkpoint of an earlier
cxr_tf run into a freshly built classifier (its head stays newly initialised).
"""
from __future__ import annotations

import json
from pathlib import Path

from cxr_tf.errors import CXRWeightsError

PREFIX = "run:"


def is_run_weights(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


def load_backbone_from_run(model, run_dir: str) -> int:
    """Copy backbone weights from ``run_dir`` (``model.json`` + ``checkpoints/best.weights.h5``).

    Returns the number of layers copied. Raises :class:`CXRWeightsError` naming the
    folder when it is not a finished cxr_tf run or its backbone differs.
    """
    from cxr_tf.models.classifier import CXRClassifier

    run = Path(run_dir[len(PREFIX):] if is_run_weights(run_dir) else run_dir)
    cfg_path, ckpt = run / "model.json", run / "checkpoints" / "best.weights.h5"
    for p in (cfg_path, ckpt):
        if not p.exists():
            raise CXRWeightsError(f"{p}: not found; --weights run:DIR needs the folder of a finished cxr_tf run "
                                  "(model.json and checkpoints/best.weights.h5)")
    config = json.loads(cfg_path.read_text())["config"]
    if config.get("backbone") != model.backbone:
        raise CXRWeightsError(f"{run}: that run trained backbone {config.get('backbone')!r}, this model is "
                              f"{model.backbone!r}")
    src = CXRClassifier.from_config(config)
    try:
        src.load_weights(str(ckpt))
    except Exception as e:  # noqa: BLE001 - h5/keras errors vary; name the file and cause
        raise CXRWeightsError(f"{ckpt}: cannot load ({type(e).__name__}: {e})") from None
    copied = 0
    for name in model.backbone_layer_names:
        layer = model.get_layer(name)
        if not layer.weights:
            continue
        w = src.get_layer(name).get_weights()
        if [a.shape for a in w] != [tuple(v.shape) for v in layer.weights]:
            raise CXRWeightsError(f"{run}: layer {name} has shapes {[a.shape for a in w]}, expected "
                                  f"{[tuple(v.shape) for v in layer.weights]}")
        layer.set_weights(w)
        copied += 1
    if not copied:
        raise CXRWeightsError(f"{run}: no backbone layer weights to copy")
    return copied
