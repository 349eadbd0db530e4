"""A new user's own data and run folder (issue 15): the layout keeps its task, subsets are
patient-level, the run folder is self-contained and small, a failed start leaves nothing."""
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import kermany_patient_id
from cxr_tf.experiments import pneumonia_freeze

SMOKE = ["--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0", "--export", "false"]


def _real_files(kermany_dir: Path, n: int):
    train = kermany_dir / "train"
    normal = sorted((train / "NORMAL").iterdir())[:n]
    pneu = sorted(p for p in (train / "PNEUMONIA").iterdir() if "bacteria" in p.name)[: n // 2]
    pneu += sorted(p for p in (train / "PNEUMONIA").iterdir() if "virus" in p.name)[: n - n // 2]
    return {"normal": normal, "pneumonia": pneu}


def _run(argv) -> Path:
    assert pneumonia_freeze.main(argv) == 0
    runs = sorted(Path("runs/pneumonia_freeze").iterdir())
    return runs[-1]


def test_kermany_named_class_folders_train_as_two_classes_and_run_folder(kermany_dir, tmp_path, monkeypatch,
                                                                          capsys, caplog):
    data = tmp_path / "my_xrays"
    for cls, files in _real_files(kermany_dir, 24).items():
        (data / cls).mkdir(parents=True)
        for f in files:  # Kermany file names (personN_virus_M.jpeg ...) under the user's own folders
            (data / cls / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)  # a relative --runs-dir, as a user types it
    with caplog.at_level("WARNING", logger="cxr_tf"):
        run = _run(["--data-dir", str(data), "--runs-dir", "runs", *SMOKE])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "read as folder (detected)" in text and "patients: none given: each image is its own patient" in text
    # the manifest hint: one logged line (a plain stderr line without logging set up), no UserWarning
    hints = [r for r in caplog.records if "path,label,patient_id" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelname == "WARNING"
    assert "UserWarning" not in text
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["per_class"]) == {"normal", "pneumonia"}  # not bacterial / viral / normal

    # report.md: every image link resolves from the report's own folder; the curves are embedded
    report = (run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "plots/training_curves.png" in links and len(links) >= 5
    for link in links:
        assert not Path(link).is_absolute() and (run / link).is_file(), link

    # the best checkpoint holds the weights only: no optimizer group, size close to the weights
    ckpt = run / "checkpoints" / "best.weights.h5"
    with h5py.File(ckpt) as h:
        assert "optimizer" not in h
    params = json.loads((run / "model.json").read_text())["parameters"]
    weight_bytes = 4 * (params["trainable"] + params["non_trainable"])
    assert ckpt.stat().st_size < 1.3 * weight_bytes + 200_000, (ckpt.stat().st_size, weight_bytes)
    assert not (run / "backup").exists()  # the resume backup goes once the run is finished


def test_normal_pneumonia_manifest_trains_as_two_classes_on_a_patient_subset(kermany_dir, tmp_path,
                                                                             monkeypatch, capsys):
    rows = [{"path": str(f), "label": cls, "patient_id": kermany_patient_id(f.name)}
            for cls, files in _real_files(kermany_dir, 60).items() for f in files]
    (tmp_path / "imgs").mkdir()
    for r in rows:  # copies (a symlink resolves outside the manifest's folder, which it refuses)
        dst = tmp_path / "imgs" / Path(r["path"]).name
        shutil.copyfile(r["path"], dst)
        r["path"] = f"imgs/{dst.name}"
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    monkeypatch.chdir(tmp_path)
    # no --classes: the manifest's labels are the classes (pneumonia_freeze's default is 3class)
    run = _run(["--data-dir", "cohort.csv", "--runs-dir", "runs", "--max-images", "80", *SMOKE])
    text = capsys.readouterr().out
    assert "read as csv (detected)" in text and "manifest column 'patient_id'" in text
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["per_class"]) == {"normal", "pneumonia"}
    splits = pd.read_csv(run / "splits.csv")
    assert 60 <= len(splits) <= 80  # --max-images: at most 80 images ...
    full = pd.DataFrame(rows)
    kept = full[full["path"].apply(lambda p: Path(p).name).isin(splits["item"].apply(lambda p: Path(p).name))]
    per_patient = full.groupby("patient_id").size()
    kept_n = kept.groupby("patient_id").size()
    assert (kept_n == per_patient[kept_n.index]).all()  # ... whole patients
    share = (kept["label"] == "pneumonia").mean()
    assert abs(share - 0.5) < 0.1  # stratified: the manifest is half pneumonia
    assert "subset (--max-images 80" in text


def test_failed_start_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # tiny_cnn has no ImageNet weights: the same failure as --weights imagenet offline,
    # after the run folder, data and split were written
    rc = pneumonia_freeze.main(["--runs-dir", "runs", "--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0",
                                "--weights", "imagenet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cxr_tf: error:" in err and "removed the run folder" in err
    assert not Path("runs/pneumonia_freeze").exists()
    # a run that trained stays (its resume backup is what --resume needs)
    from cxr_tf.training.run import trained_anything

    run = Path("runs/x/1")
    (run / "checkpoints").mkdir(parents=True)
    assert not trained_anything(run)
    (run / "history.csv").write_text("epoch,loss\n0,0.5\n")
    assert trained_anything(run)


MODULES = ["pneumonia_freeze", "freeze_depth", "augmentation_ablation", "batch_lr_grid", "ssl_pretrain",
           "ssl_finetune", "covid_ssl_compare", "deep_covid", "chexpert_noisy", "perceptual_testset",
           "perceptual_agreement", "train_preset"]


def _check_help(module: str, text: str) -> None:
    options = text.split("options:", 1)[1]
    # one entry per flag: "  --flag METAVAR   help text (default: x)" (wrapped lines are indented deeper)
    entries = re.split(r"\n  (?=-)", "\n" + options.strip("\n"))
    flags = [e for e in entries if e.strip().startswith("--")]
    assert len(flags) > 10
    for e in flags:
        head = e.split()[0]
        assert "(default:" in e, f"{module} {head}: no default shown"
        body = re.sub(r"\(default:.*?\)", "", " ".join(e.split()[1:]), flags=re.S)
        words = [w for w in body.split() if not w.isupper() and w != "[BOOL]"]
        assert len(words) >= 2, f"{module} {head}: no help text ({e!r})"
    if module not in ("perceptual_testset", "perceptual_agreement"):  # the training experiments
        for flag in ("--max-images", "--fraction"):
            assert flag in options, f"{module}: {flag} missing"


@pytest.mark.parametrize("module", MODULES)
def test_every_flag_has_help_and_default(module, capsys, monkeypatch):
    """Each experiment's ``main(["--help"])`` (what ``python -m`` runs): a description and
    the default for every flag."""
    import importlib

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"cxr_tf.experiments.{module}").main(["--help"])
    assert e.value.code == 0
    _check_help(module, capsys.readouterr().out)


def test_help_through_python_dash_m():
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "cxr_tf.experiments.pneumonia_freeze", "--help"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
    _check_help("pneumonia_freeze", res.stdout)


def test_tensorboard_test_confusion_matrix_names_its_weights_epoch(tmp_path, monkeypatch):
    import cxr_tf.evaluation as ev
    from cxr_tf.training import flow as common
    from cxr_tf.training.run import RunDir

    titles = []
    real = ev.confusion_matrix_image
    monkeypatch.setattr(ev, "confusion_matrix_image", lambda *a, **k: (titles.append(k["title"]), real(*a, **k))[1])
    run = RunDir(tmp_path / "run")
    metrics = {"confusion_matrix": [[3, 1], [0, 4]], "accuracy": 0.875}
    common.write_tensorboard_summaries(run, metrics, ["normal", "pneumonia"], step=5, weights_epoch=3)
    assert titles == ["test, weights of epoch 3 (best val_auc)"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tensorboard / "test"), size_guidance={"tensors": 0})
    acc.Reload()
    # logged at that epoch's step (Keras logs epoch k at step k - 1), beside its validation curves
    assert [e.step for e in acc.Tensors("confusion_matrix")] == [2]


def test_manifest_classes_only_forced_by_an_explicit_classes_flag(tmp_path):
    from cxr_tf.errors import CXRDatasetError
    from cxr_tf.training import flow as common

    (tmp_path / "img").mkdir()
    pd.DataFrame({"path": [f"img/{i}.png" for i in range(4)], "label": ["normal", "pneumonia"] * 2,
                  "patient_id": list("abcd")}).to_csv(tmp_path / "m.csv", index=False)
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path / "m.csv")])  # default --classes 3class
    assert common.load_experiment_data(cfg, cfg.classes).class_names == ["normal", "pneumonia"]
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path / "m.csv"), "--classes", "pneumonia"])
    assert common.load_experiment_data(cfg, cfg.classes).class_names == ["normal", "pneumonia"]
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path / "m.csv"), "--classes", "3class"])
    with pytest.raises(CXRDatasetError, match=r"unknown labels \['pneumonia'\].*drop --classes"):
        common.load_experiment_data(cfg, cfg.classes)
