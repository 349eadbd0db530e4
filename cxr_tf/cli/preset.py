"""``cxr-tf presets``: list, show and save presets (see :mod:`cxr_tf.models.presets`).

    cxr-tf presets list                       names, where each lives, backbone, size, classes
    cxr-tf presets show NAME                  the model card, then config and metadata paths
    cxr-tf presets save --run RUN --name NAME [--out DIR] [--weights-dtype float16|float32]
"""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("cxr_tf.cli")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="presets_cmd", required=True)
    sub.add_parser("list", help="presets preset:NAME can load (cache, embedded, remote)")
    s = sub.add_parser("show", help="print a preset's model card")
    s.add_argument("name", help="NAME, preset:NAME or a preset folder")
    v = sub.add_parser("save", help="save a finished run's best checkpoint as a preset")
    v.add_argument("--run", required=True, help="the run folder (model.json, metrics.json, checkpoints/)")
    v.add_argument("--name", required=True)
    v.add_argument("--out", default=None, help="preset folder (default: the user cache, $CXR_TF_HOME/presets/NAME)")
    v.add_argument("--weights-dtype", default="float16", choices=["float16", "float32"])
    v.add_argument("--licence", default=None, help="licence of the training data, when the source is not a known one")
    v.add_argument("--description", default=None)
    v.add_argument("--overwrite", action="store_true")


def run(a) -> None:
    from cxr_tf.models import presets as P

    if a.presets_cmd == "list":
        rows = P.preset_table()
        if not rows:
            print(f"no presets installed (user cache {P.presets_home()}, embedded {P.embedded_dir()})")
        for r in rows:
            if "status" in r:
                print(f"{r['name']:<24} {r['status']}")
            elif "url" in r:
                print(f"{r['name']:<24} {r['location']}: {r['url']}")
            else:
                print(f"{r['name']:<24} {r['location']:<9} {r['backbone']:<14} {r['image_size']:>4}px  "
                      f"classes={','.join(r['classes'])}  {r['description']}")
    elif a.presets_cmd == "show":
        p = P.load_preset(a.name)
        card = p.path / P.CARD_FILE
        print(card.read_text() if card.is_file() else P.model_card(p.metadata, p.config))
        logger.info(f"{p.source}: {p.path}")
    elif a.presets_cmd == "save":
        out = P.save_preset_from_run(a.run, a.name, a.out, weights_dtype=a.weights_dtype, overwrite=a.overwrite,
                                     licence=a.licence, description=a.description)
        logger.info(f"wrote preset {a.name} to {out} (load with preset:{a.name if a.out is None else out})")
