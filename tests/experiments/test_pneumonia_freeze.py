"""End-to-end runs of the main job, as a user runs it."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.experiments import pneumonia_freeze


def _tags(event_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for sub in event_dir.iterdir():
        acc = EventAccumulator(str(sub), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
        acc.Reload()
        t = acc.Tags()
        tags |= {f"{sub.name}/{x}" for k in ("scalars", "images", "tensors") for x in t.get(k, [])}
    return tags


def _run(tmp_path, *args):
    argv = ["--runs-dir", str(tmp_path / "runs"), "--saved-models-dir", str(tmp_path / "saved_models"), *args]
    assert pneumonia_freeze.main(argv) == 0
    runs = sorted((tmp_path / "runs" / "pneumonia_freeze").iterdir())
    return runs[-1]


def test_smoke_run_folder_tensorboard_and_export(tmp_path, capsys):
    run = _run(tmp_path, "--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0")
    for f in ("config.json", "splits.csv", "metrics.json", "report.md", "history.csv", "environment.json",
              "plots/roc.png", "plots/pr.png", "plots/confusion_matrix.png", "plots/training_curves.png",
              "checkpoints/best.weights.h5", "skipped.csv"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["freeze_until"] == 0 and cfg["smoke"] is True
    splits = (run / "splits.csv").read_text().splitlines()
    assert splits[0].startswith("item,patient,split") and len(splits) == 96 + 1
    m = json.loads((run / "metrics.json").read_text())
    assert m["n"] == sum(1 for l in splits[1:] if ",test," in l)
    assert set(m["per_class"]) == {"bacterial", "viral", "normal"}
    assert m["parameters"]["trainable"] > 0
    diffs = m["export"]["max_abs_diff_vs_keras"]
    assert diffs["predict_images"] <= 1e-5
    assert Path(m["export"]["path"]).joinpath("saved_model.pb").is_file()
    assert "name: 'pneumonia_3class_tiny_cnn'" in Path(m["export"]["models_config"]).read_text()
    assert Path(m["export"]["path"], "assets.extra", "tf_serving_warmup_requests").is_file()
    meta_text = Path(m["export"]["path"], "assets.extra", "cxr_tf_metadata.json").read_text()
    meta = json.loads(meta_text)
    assert meta["class_names"] == ["bacterial", "viral", "normal"] and meta["image_size"] == cfg["image_size"]
    assert meta["decision_rule"] == "argmax" and meta["threshold"] is None and meta["keras_model"]
    assert str(tmp_path) not in meta_text  # no path of the exporting machine travels with the model
    tags = _tags(run / "tensorboard")
    for tag in ("train/epoch_loss", "train/epoch_accuracy", "train/epoch_auc", "train/epoch_learning_rate",
                "validation/epoch_auc", "train/sample_inputs", "validation/confusion_matrix", "test/confusion_matrix"):
        assert tag in tags, (tag, sorted(tags))
    assert f"tensorboard --logdir {run / 'tensorboard'}" in capsys.readouterr().out


@pytest.mark.slow
def test_learns_on_real_kermany_and_export_matches(tmp_path, kermany_subset):
    """Real images: validation AUC well above chance; served == offline on real JPEGs (both signatures)."""
    data = kermany_subset(240, 120, 120)
    run = _run(tmp_path, "--data-dir", str(data), "--classes", "pneumonia", "--backbone", "tiny_cnn",
               "--freeze-until", "0", "--image-size", "64", "--epochs", "8", "--batch-size", "16", "--lr", "1e-3",
               "--bn-momentum", "0.9",
               "--augment", "light", "--early-stopping", "0")
    m = json.loads((run / "metrics.json").read_text())
    assert m["validation"]["macro_auc"]["value"] > 0.8, m["validation"]
    assert m["macro_auc"]["value"] > 0.8
    assert m["threshold"] is not None  # binary: operating point chosen on validation data
    d = m["export"]["max_abs_diff_vs_keras"]
    assert d["serving_default"] <= 1e-5 and d["predict_images"] <= 1e-5, d

    # the exported model scores the held-out split through `cxr-tf evaluate` exactly as in training
    from cxr_tf.cli import main as cli

    out = tmp_path / "eval"
    assert cli(["evaluate", "--model", m["export"]["path"], "--data-dir", str(data), "--format", "kermany",
                "--splits", str(run / "splits.csv"), "--split-name", "test", "--out", str(out)]) == 0
    ev = json.loads((out / "metrics.json").read_text())
    assert ev["n"] == m["n"]
    assert abs(ev["macro_auc"]["value"] - m["macro_auc"]["value"]) < 1e-6
    assert ev["confusion_matrix"] == m["confusion_matrix"]


@pytest.mark.slow
def test_two_class_folder_export_describes_its_own_classes(tmp_path, kermany_subset):
    """A folder-per-class model exports its folder names, its threshold at the top level, and no "3class"."""
    data = kermany_subset(16, 8, 8)
    run = _run(tmp_path, "--data-dir", str(data / "train"), "--format", "folder", "--smoke", "--backbone", "tiny_cnn",
               "--freeze-until", "0", "--epochs", "1")
    m = json.loads((run / "metrics.json").read_text())
    meta = json.loads(Path(m["export"]["path"], "assets.extra", "cxr_tf_metadata.json").read_text())
    assert meta["class_names"] == m["class_names"] and len(meta["class_names"]) == 2
    assert Path(m["export"]["path"]).parent.name == "pneumonia_pneumonia_tiny_cnn"  # NORMAL/PNEUMONIA folders
    assert meta["metadata"]["config"]["classes"] == meta["class_names"] and "3class" not in json.dumps(meta)
    assert meta["threshold"] == pytest.approx(m["threshold"])
    assert meta["decision_rule"] == m["decision_rule"]  # the served rule is the report's
    assert str(tmp_path) not in json.dumps(meta)


@pytest.mark.slow
def test_bad_files_raise_or_are_skipped(tmp_path, kermany_subset, capsys):
    data = kermany_subset(30, 15, 15)
    good = next((data / "train" / "NORMAL").iterdir()).resolve()
    bad = {
        "IM-9001-0001.jpeg": good.read_bytes()[: good.stat().st_size // 2],  # truncated
        "IM-9002-0001.jpeg": b"",  # zero bytes
        "IM-9003-0001.jpeg": b"this is a text file, not an image\n",
    }
    for name, content in bad.items():
        (data / "train" / "NORMAL" / name).write_bytes(content)
    args = ["--data-dir", str(data), "--backbone", "tiny_cnn", "--freeze-until", "0", "--smoke", "--export", "false"]
    argv = ["--runs-dir", str(tmp_path / "runs"), *args]
    assert pneumonia_freeze.main(argv) == 2
    err = capsys.readouterr().err
    assert "cxr_tf: error:" in err and "IM-900" in err and "Traceback" not in err
    run = _run(tmp_path, *args, "--on-error", "skip")
    skipped = (run / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 1 + 3 and all(any(n in l for l in skipped) for n in bad)
    split_items = (run / "splits.csv").read_text()
    assert "IM-9001" not in split_items and split_items.count("\n") == 60 + 1  # nothing else lost


@pytest.mark.slow
def test_seed_model_resnet50_on_real_images(tmp_path, kermany_subset):
    """The seed-004 ResNet50 (frozen to 144, extra FC head) end to end on real JPEGs."""
    data = kermany_subset(24, 12, 12)
    run = _run(tmp_path, "--data-dir", str(data), "--smoke", "--image-size", "64", "--epochs", "1",
               "--backbone", "resnet50", "--weights", "none", "--freeze-until", "144", "--allow-random-frozen")
    m = json.loads((run / "metrics.json").read_text())
    assert m["parameters"]["trainable"] == 15_009_027
    d = m["export"]["max_abs_diff_vs_keras"]
    assert d["serving_default"] <= 1e-5 and d["predict_images"] <= 1e-5, d
    from cxr_tf.export import inspect_with_cli

    shown = inspect_with_cli(m["export"]["path"])
    assert "serving_default" in shown and "predict_images" in shown and "DT_STRING" in shown


@pytest.mark.slow
def test_run_on_a_manifest_with_sex_age_view_writes_subgroups_into_report_and_card(data_dir, tmp_path):
    """Real NIH images with their sex / age / view: the run's test split gets a subgroup table."""
    import csv

    from cxr_tf.experiments import pneumonia_freeze

    src = data_dir / "nih_chestxray14" / "nih1000_64"
    if not (src / "labels.csv").is_file():
        pytest.skip("nih1000_64 not present")
    every = list(csv.DictReader(open(src / "labels.csv")))
    rows = [r for r in every if r["binary_int"] == "0"][:120] + [r for r in every if r["binary_int"] == "1"][:120]
    root = tmp_path / "nih"
    root.mkdir()
    with open(root / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "sex", "age", "view"])
        for r in rows:
            (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / r["path"], root / r["path"])
            w.writerow([r["path"], "finding" if r["binary_int"] == "1" else "normal", r["patient_id"], r["sex"],
                        r["age"], r["view"]])
    assert pneumonia_freeze.main(["--data-dir", str(root / "m.csv"), "--smoke", "--backbone", "tiny_cnn",
                                  "--freeze-until", "0", "--head", "gap", "--export", "false",
                                  "--runs-dir", str(tmp_path / "runs")]) == 0
    run = next((tmp_path / "runs" / "pneumonia_freeze").iterdir())
    table = (run / "subgroups.md").read_text()
    assert "| sex | F |" in table and "| sex | M |" in table and "| view | PA |" in table
    card = (run / "MODEL_CARD.md").read_text()
    assert "## Subgroups" in card and "| sex | F |" in card
