"""Which image distance agrees with raters on CXR distortions? (SPEC S2)

Reads a test set in the BAPPS layout (written by
``cxr_tf.experiments.perceptual_testset``, judged with ``cxr-tf judge``), computes
every distance (L2, 1-SSIM, 1-MS-SSIM, deep features of registry classifiers,
with and without LPIPS-style learned linear weights) and scores it as LPIPS does:
2AFC agreement and JND mAP, with percentile-bootstrap 95% CIs over items.

Judgments: real ones (``judge/*.npy``, ``same/*.npy``) are always used when they
exist (``--judgments auto``; ``real`` requires them). Without them, ``auto`` and
``proxy`` fall back to a PROXY RATER, never a human: a "severity oracle" panel
of ``--proxy-raters`` simulated raters who each perceive a distortion's nominal
severity plus Gaussian noise (``--proxy-noise``); in 2AFC each picks the
candidate of lower perceived severity, in JND each says "same" when the perceived
severity is below ``--proxy-same-threshold``. Scores against it measure agreement
with the test set's own severity scale, not with doctors; every table says so.

The "lin" variants learn non-negative per-channel weights from 2AFC judgments;
their 2AFC score is cross-fitted (two folds split by source image: weights fitted
on one fold score the other), their JND weights come from all 2AFC items of the
subset (JND items are separate items).

Commands::

    python -m cxr_tf.experiments.perceptual_agreement --smoke        # builds a tiny synthetic set, seconds
    python -m cxr_tf.experiments.perceptual_agreement --testset DIR \\
        --classifiers random:tiny_cnn,random:resnet50,RUN_DIR_OF_pneumonia_freeze

Result (2-core AMD EPYC VM, run pinned to 1 core; kermany224 test set at 64 px, 300 triplets and
150 JND pairs per subset, PROXY severity-oracle judgments, 161 s): 2AFC agreement 0.72-0.75
(traditional) and 0.77-0.82 (cnn) for every distance, CIs overlapping, against a proxy ceiling
of 0.815 / 0.831; JND mAP 0.53-0.60 / 0.44-0.52 (chance ~0.32). Details and the table:
``experiments/results/perceptual_agreement.md``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRDatasetError
from cxr_tf.training.config import opt


@dataclasses.dataclass
class PerceptualAgreementConfig:
    experiment: str = opt("perceptual_agreement", "experiment name: runs go to <runs-dir>/<experiment>/")
    testset: str | None = opt(None, "BAPPS-layout folder (none with --smoke: a synthetic one is built)")
    judgments: str = opt("auto", "rater judgments: auto (real if present, else proxy) | real | proxy")
    proxy_raters: int = opt(5, "number of simulated raters for proxy judgments")
    proxy_noise: float = opt(0.15, "std of a proxy rater's perceived severity")
    proxy_same_threshold: float = opt(0.1, "JND: perceived severity below this counts as 'same'")
    classifiers: str = opt("random:tiny_cnn", "comma list: random:BACKBONE | model.keras | pneumonia_freeze run "
                           "folder")
    classifier_names: str = opt("", "optional comma list of table labels, same order as --classifiers")
    image_size: int = opt(64, "input size for random:BACKBONE classifiers")
    lin: bool = opt(True, "also score learned-linear-weight (LPIPS 'lin') variants")
    n_boot: int = opt(1000, "bootstrap resamples for confidence intervals")
    seed: int = opt(0, "seed for every draw")
    runs_dir: str = opt("runs", "parent folder of run folders")
    smoke: bool = opt(False, "shrink everything for a quick test run (explicit flags still win)")
    quiet: bool = opt(False, "print warnings and errors only")
    verbose: bool = opt(False, "print debugging messages too")

    def apply_smoke(self) -> None:
        self.n_boot = 50
        self.image_size = 32

    def validate(self) -> None:
        if self.judgments not in ("auto", "real", "proxy"):
            raise CXRConfigError(f"--judgments must be auto, real or proxy; got {self.judgments!r}")
        if self.testset is None and not self.smoke:
            raise CXRConfigError("--testset DIR is required (or --smoke for a synthetic demo)")
        if self.proxy_raters < 1 or self.proxy_noise < 0:
            raise CXRConfigError("--proxy-raters must be >= 1 and --proxy-noise >= 0")

    def to_dict(self):
        return dataclasses.asdict(self)


#: INFO lines through the experiments' logger (``[cxr_tf] ...``, cxr_tf.log).
log = logging.getLogger("cxr_tf.experiments").info


PROXY_NOTE = ("PROXY RATER, NOT HUMAN JUDGMENTS: a simulated 'severity oracle' panel ({r} raters, each perceiving a "
              "distortion's nominal severity + N(0, {n}); 2AFC: picks the lower perceived severity; JND: 'same' below "
              "{t}). Scores measure agreement with the test set's severity scale, not with doctors.")


def proxy_judgments(manifest, kind: str, raters: int, noise: float, same_threshold: float, seed: int) -> dict:
    """The severity-oracle panel's judgments, id -> fraction (p1 chosen / "same")."""
    out = {}
    for _, r in manifest.iterrows():
        rng = np.random.default_rng([seed, int(r["seed"]) % (2**32)])
        if kind == "2afc":
            s0 = r["severity_p0"] + rng.normal(0, noise, raters)
            s1 = r["severity_p1"] + rng.normal(0, noise, raters)
            out[r["id"]] = float(np.mean(s1 < s0))
        else:
            s1 = r["severity_p1"] + rng.normal(0, noise, raters)
            out[r["id"]] = float(np.mean(s1 < same_threshold))
    return out


def _distances(cfg):
    """name -> (kind, callable or DeepFeatureDistance)."""
    from cxr_tf.perceptual.distances import DeepFeatureDistance, l2, load_classifier, ms_ssim_distance, ssim_distance

    out = {"L2": l2, "1-SSIM": ssim_distance, "1-MS-SSIM": ms_ssim_distance}
    specs = [s.strip() for s in cfg.classifiers.split(",") if s.strip()]
    labels = [s.strip() for s in cfg.classifier_names.split(",")] if cfg.classifier_names else []
    for k, spec in enumerate(specs):
        model = load_classifier(spec, image_size=cfg.image_size, seed=cfg.seed)
        label = labels[k] if k < len(labels) and labels[k] else spec
        out[f"deep[{label}]"] = DeepFeatureDistance(model, name=f"deep[{label}]")
    return out


def _folds(manifest) -> np.ndarray:
    """Fold 0/1 per item by source image (stable hash), so a fold never sees another's images."""
    import zlib

    return np.array([zlib.crc32(str(s).encode()) % 2 for s in manifest["source_image"]])


def _boot(metric, y, score, cfg):
    from cxr_tf.evaluation.ci import bootstrap_ci

    return bootstrap_ci(metric, y, score, n_boot=cfg.n_boot, seed=cfg.seed, stratified=False)


def score_subset(cfg, root, subset, dists, judgments_mode):
    """Scores of every distance on the 2AFC and JND items of one subset -> rows, per-item table."""
    import pandas as pd

    from cxr_tf.perceptual import bapps
    from cxr_tf.perceptual.distances import DeepFeatureDistance
    from cxr_tf.perceptual.scoring import score_2afc, score_jnd

    rows, per_item = [], []
    lin_w = {}
    for kind in ("2afc", "jnd"):
        if subset not in bapps.subsets(root, kind):
            continue
        real = bapps.has_judgments(root, kind, subset)
        if judgments_mode == "real" and not real:
            raise CXRDatasetError(Path(root) / kind / subset, f"no {bapps.JUDGMENT_DIR[kind]}/*.npy judgments "
                                  "(collect them with `cxr-tf judge`, or use --judgments proxy)")
        use_real = real and judgments_mode != "proxy"
        if use_real:
            items = bapps.read_items(root, kind, subset)
            source = "real raters"
        else:
            man = bapps.read_manifest(root)
            man = man[(man["kind"] == kind) & (man["subset"] == subset)]
            j = proxy_judgments(man, kind, cfg.proxy_raters, cfg.proxy_noise, cfg.proxy_same_threshold, cfg.seed)
            items = bapps.read_items(root, kind, subset, judgments=j)
            source = "PROXY (severity oracle)"
        n = len(items.ids)
        if n == 0:
            continue
        log(f"{kind}/{subset}: {n} judged items ({source})")
        y = items.judgments
        item_tab = pd.DataFrame({"kind": kind, "subset": subset, "id": items.ids, "judgment": y})
        for name, fn in dists.items():
            t = time.time()
            variants = {}
            if kind == "2afc":
                if isinstance(fn, DeepFeatureDistance):
                    v0 = fn.channel_distances(items.images["ref"], items.images["p0"])
                    v1 = fn.channel_distances(items.images["ref"], items.images["p1"])
                    variants[name] = (v0 @ fn.w, v1 @ fn.w)
                    if cfg.lin:
                        folds = _folds(items.manifest)
                        d0, d1 = np.zeros(n), np.zeros(n)
                        for f in (0, 1):
                            tr, te = folds != f, folds == f
                            if tr.sum() == 0 or te.sum() == 0:
                                continue
                            w = fn.fit_linear(v0[tr], v1[tr], y[tr]).w
                            d0[te], d1[te] = v0[te] @ w, v1[te] @ w
                        variants[name + "+lin"] = (d0, d1)
                        lin_w[name] = fn.fit_linear(v0, v1, y).w
                else:
                    variants[name] = (fn(items.images["ref"], items.images["p0"]),
                                      fn(items.images["ref"], items.images["p1"]))
                same_type = (items.manifest["distortion_p0"] == items.manifest["distortion_p1"]).to_numpy()
                for vname, (d0, d1) in variants.items():
                    m = lambda yy, dd: score_2afc(dd[:, 0], dd[:, 1], yy)[0]
                    dd = np.stack([d0, d1], 1)
                    sc = score_2afc(d0, d1, y)[0]
                    lo, hi = _boot(m, y, dd, cfg)
                    rows.append(dict(distance=vname, kind="2afc", subset=subset, items=n, judgments=source,
                                     score=sc, ci_low=lo, ci_high=hi))
                    if same_type.any() and (~same_type).any():
                        ss = score_2afc(d0[same_type], d1[same_type], y[same_type])[0]
                        lo2, hi2 = _boot(m, y[same_type], dd[same_type], cfg)
                        rows.append(dict(distance=vname, kind="2afc (same distortion in p0, p1)", subset=subset,
                                         items=int(same_type.sum()), judgments=source, score=ss, ci_low=lo2,
                                         ci_high=hi2))
                    item_tab[f"{vname}_d0"], item_tab[f"{vname}_d1"] = d0, d1
            else:
                if isinstance(fn, DeepFeatureDistance):
                    v = fn.channel_distances(items.images["p0"], items.images["p1"])
                    variants[name] = v @ fn.w
                    if cfg.lin and name in lin_w:
                        variants[name + "+lin"] = v @ lin_w[name]
                else:
                    variants[name] = fn(items.images["p0"], items.images["p1"])
                for vname, d in variants.items():
                    sc = score_jnd(d, y)
                    lo, hi = _boot(lambda yy, dd: score_jnd(dd, yy), y, d, cfg)
                    rows.append(dict(distance=vname, kind="jnd", subset=subset, items=n, judgments=source,
                                     score=sc, ci_low=lo, ci_high=hi))
                    item_tab[vname] = d
            log(f"  {name}: {time.time() - t:.1f}s")
        per_item.append(item_tab)
    return rows, per_item


def write_tables(rows, path_md: Path, path_csv: Path, cfg, header: str) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(path_csv, index=False, float_format="%.4f")
    lines = [header, ""]
    if (df["judgments"].str.startswith("PROXY")).any():
        lines += ["> **" + PROXY_NOTE.format(r=cfg.proxy_raters, n=cfg.proxy_noise, t=cfg.proxy_same_threshold)
                  + "**", ""]
    for (kind, subset), g in df.groupby(["kind", "subset"], sort=False):
        lines += [f"### {kind} / {subset} ({int(g['items'].iloc[0])} items, judgments: {g['judgments'].iloc[0]})", "",
                  "| distance | score | 95% CI |", "|---|---|---|"]
        for _, r in g.sort_values("score", ascending=False).iterrows():
            lines.append(f"| {r['distance']} | {r['score']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
        lines.append("")
    path_md.write_text("\n".join(lines))


def run(cfg: PerceptualAgreementConfig) -> Path:
    from cxr_tf.perceptual import bapps
    from cxr_tf.training.run import RunDir, _new_run_path

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.time()
    run_dir = RunDir(_new_run_path(Path(cfg.runs_dir) / cfg.experiment))
    root = cfg.testset
    if root is None:  # --smoke: a tiny synthetic test set inside the run folder
        from cxr_tf.perceptual import testset as pt
        from cxr_tf.training.config import parse_config

        root = str(run_dir / "testset")
        pt.run(parse_config(pt.PerceptualTestsetConfig, ["--smoke", "--cnn", "false", "--grid", "false",
                                                         "--out-dir", root, "--seed", str(cfg.seed)]))
    if not (Path(root) / "manifest.csv").is_file():
        raise CXRDatasetError(root, "not a test set: no manifest.csv")
    run_dir.path.joinpath("config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    dists = _distances(cfg)
    rows, items = [], []
    subsets = sorted(set(bapps.subsets(root, "2afc")) | set(bapps.subsets(root, "jnd")))
    for subset in subsets:
        r, it = score_subset(cfg, root, subset, dists, cfg.judgments)
        rows += r
        items += it
    if not rows:
        raise CXRDatasetError(root, "no judged items to score")
    import pandas as pd

    pd.concat(items, ignore_index=True).to_csv(run_dir / "item_distances.csv", index=False, float_format="%.6g")
    wall = time.time() - t0
    header = (f"# Perceptual agreement on {root}\n\nDistances scored as LPIPS does (2AFC agreement with the fraction "
              f"of raters, ties half; JND mAP), 95% percentile bootstrap over items ({cfg.n_boot} resamples). "
              f"Wall time {wall:.0f} s.")
    write_tables(rows, run_dir / "results.md", run_dir / "results.csv", cfg, header)
    (run_dir / "metrics.json").write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=2, default=float))
    log(f"wrote {run_dir / 'results.md'} ({wall:.0f}s)")
    print((run_dir / "results.md").read_text())
    return run_dir.path


def main(argv=None) -> int:
    from cxr_tf.errors import run_main
    from cxr_tf.training.config import parse_config

    cfg = parse_config(PerceptualAgreementConfig, argv, description=__doc__.split("\n")[0])
    return run_main(run, cfg)


if __name__ == "__main__":
    sys.exit(main())
