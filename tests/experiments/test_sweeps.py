"""Seed-004 experiments: augmentation ablation (k-fold), batch x lr grid, freeze depth."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import kfold_with_validation
from cxr_tf.datasets.synthetic import make_synthetic_cxr
from cxr_tf.experiments import augmentation_ablation, batch_lr_grid, freeze_depth, pneumonia_freeze


def _only_run(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]


# --- folds -----------------------------------------------------------------------------

def test_kfold_with_validation_patient_disjoint_and_each_image_tested_once():
    ds = make_synthetic_cxr(n=180, image_size=16, seed=1)
    # several images per patient, so patient grouping matters
    ds.meta["patient_id"] = [f"p{i // 3}" for i in range(len(ds))]
    folds = kfold_with_validation(ds, k=5, val_fraction=1 / 9, seed=0)
    assert len(folds) == 5
    tested = np.zeros(len(ds), int)
    pid = np.asarray(ds.patient_ids)
    for split in folds:
        tested += split == "test"
        for p in np.unique(pid):
            assert len(set(split[pid == p])) == 1, f"patient {p} spans splits"
        n_train = len(set(pid[split == "train"]))
        n_val = len(set(pid[split == "val"]))
        assert abs(n_val / (n_train + n_val) - 1 / 9) < 0.05
    assert (tested == 1).all()
    again = kfold_with_validation(ds, k=5, val_fraction=1 / 9, seed=0)
    assert all((a == b).all() for a, b in zip(folds, again))


def test_patient_subset_keeps_whole_patients_and_class_mix():
    from cxr_tf.datasets import patient_subset

    ds = make_synthetic_cxr(n=300, image_size=16, seed=2)
    ds.meta["patient_id"] = [f"p{i // 2}" for i in range(len(ds))]
    sub = patient_subset(ds, 100, seed=0)
    assert 90 <= len(sub) <= 100
    pid_all = pd.Series(ds.patient_ids).value_counts()
    pid_sub = pd.Series(sub.patient_ids).value_counts()
    assert (pid_sub == pid_all[pid_sub.index]).all()  # no patient cut in half
    mix_all = np.bincount(ds.class_index(), minlength=3) / len(ds)
    mix_sub = np.bincount(sub.class_index(), minlength=3) / len(sub)
    assert np.abs(mix_all - mix_sub).max() < 0.08


# --- statistics and plots --------------------------------------------------------------

def test_paired_tests_match_scipy_and_summary():
    from scipy import stats

    res = pd.DataFrame({"case": [1] * 4 + [2] * 4, "fold": list(range(4)) * 2,
                        "macro_auc": [0.70, 0.72, 0.68, 0.71, 0.75, 0.74, 0.73, 0.78],
                        "accuracy": [0.6] * 8, "balance": ["none"] * 8, "augment": ["none"] * 4 + ["strong"] * 4,
                        "seconds": [1.0] * 8})
    t = augmentation_ablation.paired_tests(res, "macro_auc").iloc[0]
    a, b = res.macro_auc[:4].to_numpy(), res.macro_auc[4:].to_numpy()
    assert t["mean_diff_b_minus_a"] == pytest.approx((b - a).mean())
    assert t["t_test_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert t["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b - a).pvalue)
    s = augmentation_ablation.summarise(res).set_index("case")
    assert s.loc[2, "macro_auc_mean"] == pytest.approx(b.mean())
    assert s.loc[1, "macro_auc_std"] == pytest.approx(a.std(ddof=1))
    assert s.loc[1, "folds"] == 4


def test_heatmap_marks_best_cell_and_draws_linear_scaling_through_it(tmp_path):
    rows = [{"batch_size": b, "learning_rate": lr, "val_macro_auc": 0.5 + 0.01 * i}
            for i, (b, lr) in enumerate((b, lr) for b in (8, 16, 32) for lr in (1e-2, 1e-3, 1e-4))]
    rows[4]["val_macro_auc"] = 0.99  # batch 16, lr 1e-3
    best = batch_lr_grid.heatmap(pd.DataFrame(rows), tmp_path / "h.png")
    line = best.pop("linear_scaling")
    assert best == {"batch_size": 16, "learning_rate": 1e-3, "val_macro_auc": 0.99}
    assert (tmp_path / "h.png").stat().st_size > 5000
    # in data space: lr / batch constant (slope 1 in log-log), through the best cell
    b, lr = np.array(line["batch_size"], float), np.array(line["learning_rate"])
    assert list(b) == [8, 16, 32] and line["through"] == {"batch_size": 16, "learning_rate": 1e-3}
    np.testing.assert_allclose(lr / b, 1e-3 / 16)
    assert line["lr_per_batch"] == pytest.approx(1e-3 / 16)
    assert np.polyfit(np.log(b), np.log(lr), 1)[0] == pytest.approx(1.0)
    assert lr[1] == pytest.approx(1e-3)
    # as drawn (cell-index coordinates; columns: batch 8, 16, 32; rows: lr 1e-2, 1e-3, 1e-4):
    # through the centre of the best cell (column 1, row 1); one batch doubling moves
    # log10(2) of a decade up, so batch 8 sits at lr 5e-4 (row 1.301), 32 at 2e-3 (0.699)
    x, y = np.array(line["x"]), np.array(line["y"], float)
    assert np.interp(1.0, x, y) == pytest.approx(1.0, abs=1e-3)
    assert y[0] == pytest.approx(1 + np.log10(2), abs=1e-3) and y[-1] == pytest.approx(1 - np.log10(2), abs=1e-3)
    assert np.polyfit(x, y, 1)[0] == pytest.approx(-np.log10(2), abs=1e-3)
    # where the line leaves the grid's lr range it is not drawn
    rows[4]["val_macro_auc"], rows[0]["val_macro_auc"] = 0.5, 0.99  # best: batch 8, lr 1e-2 (top left)
    best = batch_lr_grid.heatmap(pd.DataFrame(rows), tmp_path / "h2.png")
    assert (best["batch_size"], best["learning_rate"]) == (8, 1e-2)
    ys = best["linear_scaling"]["y"]
    assert ys[0] == pytest.approx(0.0) and ys[-1] is None
    np.testing.assert_allclose(best["linear_scaling"]["learning_rate"], [1e-2, 2e-2, 4e-2])


def test_config_errors_are_named():
    from cxr_tf.errors import CXRConfigError

    with pytest.raises(CXRConfigError, match="--cases"):
        augmentation_ablation.parse(["--smoke", "--cases", "1,7"])
    with pytest.raises(CXRConfigError, match="unknown augmentation"):
        augmentation_ablation.parse(["--smoke", "--strong-policy", "s2+sparkles"])
    with pytest.raises(CXRConfigError, match="freezes randomly initialised"):
        freeze_depth.parse(["--smoke", "--weights", "none"])
    with pytest.raises(CXRConfigError, match="--batches"):
        batch_lr_grid.parse(["--smoke", "--batches", "8,x"])


def test_backbone_from_an_earlier_run(tmp_path):
    """--weights run:DIR copies the backbone by layer name; the head stays fresh."""
    from cxr_tf.errors import CXRWeightsError
    from cxr_tf.models import build_model
    from cxr_tf.models.transfer import load_backbone_from_run

    src = build_model("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=0, class_names=["a", "b"])
    for w in src.weights:
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype("float32"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    src.save_weights(str(run / "checkpoints" / "best.weights.h5"))
    (run / "model.json").write_text(json.dumps({"config": src.get_config()}))
    dst = build_model("tiny_cnn", num_classes=3, image_size=64, head="gap", freeze_until=0, class_names=["x", "y", "z"])
    n = load_backbone_from_run(dst, f"run:{run}")
    assert n == 6  # 3 conv + 3 batch-norm layers
    for name in ("block1_conv", "block3_bn"):
        for a, b in zip(src.get_layer(name).get_weights(), dst.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert dst.get_layer("predictions").get_weights()[0].shape == (64, 3)
    with pytest.raises(CXRWeightsError, match="not found"):
        load_backbone_from_run(dst, f"run:{tmp_path / 'nope'}")


# --- the experiments, end to end -------------------------------------------------------

def test_augmentation_ablation_synthetic_folds_patient_disjoint_and_identical_for_every_case(tmp_path):
    """--smoke on the synthetic source (1-3 images per patient): 2 cases x 2 folds."""
    argv = ["--smoke", "--cases", "1,4", "--synthetic-n", "60", "--runs-dir", str(tmp_path / "runs")]
    assert augmentation_ablation.main(argv) == 0
    run = _only_run(tmp_path / "runs" / "augmentation_ablation")
    folds = pd.read_csv(run / "folds.csv")
    assert folds.groupby("patient").size().max() > 1  # several images per patient: grouping matters
    tested = np.zeros(len(folds), int)
    for i in range(2):
        f = folds[f"fold{i}"]
        assert set(f) == {"train", "val", "test"}
        assert (folds.groupby("patient")[f"fold{i}"].nunique() == 1).all(), f"fold {i}: a patient spans splits"
        tested += (f == "test").to_numpy()
    assert (tested == 1).all()  # the test parts partition the patients
    test_patients = [set(folds.loc[folds[f"fold{i}"] == "test", "patient"]) for i in range(2)]
    assert not test_patients[0] & test_patients[1]
    for i in range(2):
        saved = {}
        for case in (1, 4):
            cell = run / "cells" / f"case{case}_fold{i}"
            sp = pd.read_csv(cell / "splits.csv")
            assert (sp["item"].to_numpy() == folds["item"].to_numpy()).all()
            assert (sp["split"].to_numpy() == folds[f"fold{i}"].to_numpy()).all()
            assert (sp.groupby("patient")["split"].nunique() == 1).all()
            # and the cell trained / was scored on exactly that split
            n = json.loads((cell / "result.json").read_text())["n"]
            assert n == sp["split"].value_counts().reindex(["train", "val", "test"]).to_dict()
            assert len(np.load(cell / "test_predictions.npz")["y_true"]) == n["test"]
            saved[case] = sp
        pd.testing.assert_frame_equal(saved[1], saved[4])
    cfg1 = json.loads((run / "cells" / "case1_fold0" / "config.json").read_text())
    cfg4 = json.loads((run / "cells" / "case4_fold0" / "config.json").read_text())
    assert (cfg1["balance"], cfg1["augment"]) == ("none", "none")
    assert (cfg4["balance"], cfg4["augment"]) == ("oversample", "moderate")


def test_sweep_run_folder_reused_for_the_same_config(tmp_path):
    """create_run_dir(reuse=True): the newest run with an equal config (finished or not)."""
    from cxr_tf.training.run import create_run_dir

    argv = ["--smoke", "--runs-dir", str(tmp_path)]
    first = create_run_dir(batch_lr_grid.parse(argv), reuse=True)
    assert not first.reused
    first.write_json("metrics.json", {})  # finished: a plain re-run still reuses it
    again = create_run_dir(batch_lr_grid.parse(argv + ["--on-error", "skip"]), reuse=True)  # a field results ignore
    assert again.path == first.path and again.reused
    other = create_run_dir(batch_lr_grid.parse(argv + ["--lrs", "1e-4"]), reuse=True)  # a new config: a new folder
    assert other.path != first.path and not other.reused
    assert create_run_dir(batch_lr_grid.parse(argv), reuse=True).path == first.path  # not the newest run: the match
    # --resume keeps its meaning (the newest UNFINISHED match), --run-dir names the folder
    resumed = create_run_dir(batch_lr_grid.parse(argv + ["--resume"]), reuse=True)
    assert resumed.path not in (first.path, other.path) and not resumed.reused
    named = create_run_dir(batch_lr_grid.parse(argv + ["--run-dir", str(tmp_path / "mine")]), reuse=True)
    assert named.path == tmp_path / "mine"
    # experiments that are not sweeps still get a new folder per run
    assert create_run_dir(batch_lr_grid.parse(argv)).path not in (first.path, other.path, resumed.path)


def test_batch_lr_grid_plain_rerun_reuses_finished_cells_and_redoes_the_rest(tmp_path, capsys):
    argv = ["--smoke", "--lrs", "1e-3", "--synthetic-n", "60", "--runs-dir", str(tmp_path / "runs")]  # 2 x 1 grid
    assert batch_lr_grid.main(argv) == 0
    run = _only_run(tmp_path / "runs" / "batch_lr_grid")
    keep, redo = batch_lr_grid.cell_name(8, 1e-3), batch_lr_grid.cell_name(16, 1e-3)
    kept = run / "cells" / keep / "result.json"
    stamp, text = kept.stat().st_mtime_ns, kept.read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["best_by_val_auc"]
    assert best["linear_scaling"]["lr_per_batch"] == pytest.approx(best["learning_rate"] / best["batch_size"])
    assert "Linear-scaling line" in (run / "report.md").read_text()
    # an interruption: the second cell never committed, the grid never finished
    (run / "cells" / redo / "result.json").unlink()
    (run / "metrics.json").unlink()
    capsys.readouterr()
    assert batch_lr_grid.main(argv) == 0  # the same command, no --run-dir / --resume
    out = capsys.readouterr().out
    assert _only_run(tmp_path / "runs" / "batch_lr_grid") == run  # the same folder
    assert "(resuming: same config as before; 1 finished cell(s)" in out
    assert f"cell {keep}: done before, reusing" in out
    assert f"cell {redo}: done before" not in out
    assert re.findall(r"cell (\S+): \d+ train / ", out) == [redo]  # one training: the lost cell
    assert kept.stat().st_mtime_ns == stamp and kept.read_text() == text
    assert (run / "cells" / redo / "result.json").exists() and (run / "metrics.json").exists()
    grid = pd.read_csv(run / "grid.csv")
    assert sorted(grid.batch_size) == [8, 16] and grid.val_macro_auc.notna().all()



@pytest.mark.slow
def test_augmentation_ablation_identical_patient_folds_and_resume(tmp_path, kermany_subset, capsys):
    data = kermany_subset(40, 25, 25)
    argv = ["--smoke", "--data-dir", str(data), "--cases", "1,4", "--folds", "2", "--runs-dir", str(tmp_path / "runs")]
    assert augmentation_ablation.main(argv) == 0
    run = _only_run(tmp_path / "runs" / "augmentation_ablation")
    folds = pd.read_csv(run / "folds.csv")
    for f in ("fold0", "fold1"):  # patient-disjoint folds
        assert (folds.groupby("patient")[f].nunique() == 1).all()
    assert ((folds["fold0"] == "test").astype(int) + (folds["fold1"] == "test").astype(int) == 1).all()
    for i in range(2):  # every case trained on identical folds
        a = pd.read_csv(run / "cells" / f"case1_fold{i}" / "splits.csv")
        b = pd.read_csv(run / "cells" / f"case4_fold{i}" / "splits.csv")
        pd.testing.assert_frame_equal(a, b)
        assert (a["split"].to_numpy() == folds[f"fold{i}"].to_numpy()).all()
    res = pd.read_csv(run / "results.csv")
    assert sorted(zip(res.case, res.fold)) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    assert {"macro_auc", "accuracy", "recall_bacterial", "recall_viral", "recall_normal"} <= set(res.columns)
    assert res["macro_auc"].between(0, 1).all()
    cfg4 = json.loads((run / "cells" / "case4_fold0" / "config.json").read_text())
    assert (cfg4["balance"], cfg4["augment"]) == ("oversample", "moderate")
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 2 and {"macro_auc_mean", "macro_auc_std"} <= set(summary.columns)
    assert (run / "plots" / "ablation.png").stat().st_size > 5000
    assert "Paired tests" in (run / "report.md").read_text()
    tb = {p.name for p in (run / "tensorboard").iterdir()}
    assert {"case1_fold0", "case1_fold1", "case4_fold0", "case4_fold1"} <= tb
    # re-running the same command in the same folder reuses every finished cell
    stamp = (run / "cells" / "case1_fold0" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert augmentation_ablation.main(argv + ["--run-dir", str(run)]) == 0
    assert capsys.readouterr().out.count("done before, reusing") == 4
    assert (run / "cells" / "case1_fold0" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_batch_lr_grid_hparams_events_parse(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert batch_lr_grid.main(["--smoke", "--runs-dir", str(tmp_path / "runs")]) == 0
    run = _only_run(tmp_path / "runs" / "batch_lr_grid")
    grid = pd.read_csv(run / "grid.csv")
    assert sorted(zip(grid.batch_size, grid.learning_rate)) == [(8, 1e-3), (8, 1e-2), (16, 1e-3), (16, 1e-2)]
    assert (run / "plots" / "heatmap_val_auc.png").stat().st_size > 5000

    def plugin(path):
        acc = EventAccumulator(str(path))
        acc.Reload()
        return acc.PluginTagToContent("hparams")

    root = plugin(run / "tensorboard")
    exp = plugin_data_pb2.HParamsPluginData.FromString(root["_hparams_/experiment"]).experiment
    assert {h.name for h in exp.hparam_infos} == {"batch_size", "learning_rate"}
    assert "hparams/val_macro_auc" in {m.name.tag for m in exp.metric_infos}
    cell = run / "tensorboard" / batch_lr_grid.cell_name(16, 1e-3)
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin(cell)["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["batch_size"].number_value == 16
    assert start.hparams["learning_rate"].number_value == pytest.approx(1e-3)
    acc = EventAccumulator(str(cell), size_guidance={"tensors": 0})
    acc.Reload()
    assert "hparams/val_macro_auc" in acc.Tags()["tensors"]
    row = grid[(grid.batch_size == 16) & (grid.learning_rate == 1e-3)].iloc[0]
    from tensorboard.util import tensor_util

    logged = float(tensor_util.make_ndarray(acc.Tensors("hparams/val_macro_auc")[-1].tensor_proto))
    assert logged == pytest.approx(row.val_macro_auc, abs=1e-6)


@pytest.mark.slow
def test_freeze_depth_counts_and_gaps_through_pneumonia_freeze(tmp_path):
    """--compare-freeze 114,144 on ResNet50: the trainable difference is layers[114:144] (SPEC S4)."""
    argv = ["--compare-freeze", "114,144", "--smoke", "--allow-random-frozen", "--weights", "none",
            "--epochs", "1", "--synthetic-n", "40", "--runs-dir", str(tmp_path / "runs")]
    assert pneumonia_freeze.main(argv) == 0
    run = _only_run(tmp_path / "runs" / "pneumonia_freeze")  # this command's run, through training.sweep
    t = pd.read_csv(run / "freeze_depth.csv").set_index("freeze_until")
    assert t.loc[114, "trainable"] - t.loc[144, "trainable"] == 3_618_560
    assert t.loc[144, "trainable"] == 15_009_027  # conv5 (minus its first conv) + the extra-FC head
    gaps = pd.read_csv(run / "gaps_per_epoch.csv")
    assert set(gaps["cell"]) == {"f114_lr1e-04", "f144_lr1e-04"}  # this command's --lr
    assert np.allclose(gaps["gap_auc"], gaps["train_auc"] - gaps["val_auc"])
    assert (run / "plots" / "learning_curves.png").stat().st_size > 5000
