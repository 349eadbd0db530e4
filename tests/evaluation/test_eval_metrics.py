import json

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation import classification_metrics, multilabel_metrics, normal_approx_ci, wilson_ci


def test_hand_computed_three_class(hand_case):
    y, p, names, cm = hand_case
    m = classification_metrics(y, p, names, n_boot=0)
    assert m["n"] == 17 and m["confusion_matrix"] == cm.tolist()
    # (tp, fn, fp, tn) worked out by hand from the confusion matrix.
    expected = {
        "A": dict(tp=5, fn=1, fp=2, tn=9, sens=5 / 6, spec=9 / 11, prec=5 / 7, f1=10 / 13, acc=14 / 17),
        "B": dict(tp=3, fn=3, fp=2, tn=9, sens=3 / 6, spec=9 / 11, prec=3 / 5, f1=6 / 11, acc=12 / 17),
        "C": dict(tp=4, fn=1, fp=1, tn=11, sens=4 / 5, spec=11 / 12, prec=4 / 5, f1=8 / 10, acc=15 / 17),
    }
    for name, e in expected.items():
        pc = m["per_class"][name]
        assert (pc["tp"], pc["fn"], pc["fp"], pc["tn"]) == (e["tp"], e["fn"], e["fp"], e["tn"])
        assert pc["support"] == e["tp"] + e["fn"]
        assert pc["sensitivity"]["value"] == pytest.approx(e["sens"])
        assert pc["specificity"]["value"] == pytest.approx(e["spec"])
        assert pc["precision"]["value"] == pytest.approx(e["prec"])
        assert pc["f1"] == pytest.approx(e["f1"])
        assert pc["accuracy"]["value"] == pytest.approx(e["acc"])
        assert pc["sensitivity"]["wilson_ci"] == pytest.approx(list(wilson_ci(e["tp"], e["tp"] + e["fn"])))
        assert pc["specificity"]["normal_ci"] == pytest.approx(list(normal_approx_ci(e["spec"], e["tn"] + e["fp"])))
        assert pc["auc"]["bootstrap_ci"] is None  # n_boot=0
    assert m["accuracy"]["value"] == pytest.approx(12 / 17)
    assert m["accuracy"]["wilson_ci"] == pytest.approx(list(wilson_ci(12, 17)))
    assert m["averaged_accuracy"] == pytest.approx(41 / 51)  # (14 + 12 + 15) / (3 * 17)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2 + 4 / 5) / 3)
    assert m["macro_f1"] == pytest.approx((10 / 13 + 6 / 11 + 0.8) / 3)
    # Cross-check against sklearn.
    pr, rc, f1, _ = precision_recall_fscore_support(y, p.argmax(1))
    assert [m["per_class"][n]["precision"]["value"] for n in names] == pytest.approx(pr)
    assert [m["per_class"][n]["f1"] for n in names] == pytest.approx(f1)


def test_auc_matches_sklearn_and_ci_contains_point(noisy_3class):
    y, p, names = noisy_3class
    m = classification_metrics(y, p, names, n_boot=300)
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert m["macro_auc"]["n_classes"] == 3
    lo, hi = m["macro_auc"]["bootstrap_ci"]
    assert lo < m["macro_auc"]["value"] < hi
    for k, name in enumerate(names):
        auc = m["per_class"][name]["auc"]
        assert auc["value"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert auc["bootstrap_ci"][0] < auc["value"] < auc["bootstrap_ci"][1]
    json.dumps(m, allow_nan=False)  # JSON-serialisable as is


def test_input_forms_agree(noisy_3class):
    y, p, names = noisy_3class
    base = classification_metrics(y, p, names, n_boot=50)
    assert classification_metrics(np.eye(3)[y], p, names, n_boot=50) == base  # one-hot
    assert classification_metrics(np.array(names)[y], p, names, n_boot=50) == base  # strings


def test_binary_threshold_rule():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.2, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p1, ["neg", "pos"], threshold=0.5, n_boot=0)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["threshold"] == 0.5 and m["decision_rule"] == "P(pos) >= 0.5"
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["neg", "pos"], threshold=0.35, n_boot=0)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["pos"]["sensitivity"]["value"] == 1.0
    assert m["per_class"]["pos"]["specificity"]["value"] == 0.5
    # Binary macro AUC = the AUC (both one-vs-rest curves are mirror images).
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p1)) == 0.75
    with pytest.raises(CXRInputError):
        classification_metrics([0, 1, 2], np.eye(3), ["a", "b", "c"], threshold=0.5)


def test_degenerate_class_absent():
    # Class "C" never occurs in y_true but is predicted once.
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([[.7, .2, .1], [.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.2, .2, .6], [.3, .6, .1]])
    m = classification_metrics(y, p, ["A", "B", "C"], n_boot=100)
    c = m["per_class"]["C"]
    assert c["support"] == 0
    assert c["auc"] == {"value": None, "bootstrap_ci": None}
    assert c["sensitivity"]["value"] is None and c["sensitivity"]["wilson_ci"] is None
    assert c["specificity"]["value"] == pytest.approx(5 / 6)
    assert c["f1"] == 0.0  # one FP, no TP
    assert m["macro_auc"]["n_classes"] == 2
    assert m["macro_auc"]["value"] == pytest.approx(
        np.mean([roc_auc_score(y == 0, p[:, 0]), roc_auc_score(y == 1, p[:, 1])]))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 0]]
    json.dumps(m, allow_nan=False)


def test_single_class_present_binary():
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7], ["neg", "pos"], n_boot=50)
    assert m["macro_auc"]["value"] is None and m["macro_auc"]["bootstrap_ci"] is None
    assert m["per_class"]["pos"]["specificity"]["value"] is None
    assert m["accuracy"]["value"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("y,p,names", [
    ([0, 1], np.eye(3)[:2], ["a", "b"]),            # column count mismatch
    ([0, 3], np.eye(3)[:2], ["a", "b", "c"]),       # label out of range
    ([0, 1, 1], np.eye(3)[:2], ["a", "b", "c"]),    # row count mismatch
    ([[1, 1, 0]], np.eye(3)[:1], ["a", "b", "c"]),  # multi-hot is not single-label
    ([0, 1], np.eye(2), ["a", "a"]),                # duplicate names
])
def test_bad_inputs_raise(y, p, names):
    with pytest.raises(CXRInputError):
        classification_metrics(y, p, names)


def test_multilabel_masks_nan():
    rng = np.random.default_rng(5)
    n = 60
    y = (rng.random((n, 4)) < 0.4).astype(float)
    p = np.clip(0.5 * y + rng.random((n, 4)) * 0.6, 0, 1)
    y[rng.random((n, 4)) < 0.25] = np.nan
    y[:, 3] = np.nan
    y[:10, 3] = 1.0  # last label: only positives once NaNs are masked
    names = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion"]
    m = multilabel_metrics(y, p, names, n_boot=100)
    expected = []
    for j, name in enumerate(names[:3]):
        keep = ~np.isnan(y[:, j])
        ref = roc_auc_score(y[keep, j], p[keep, j])
        expected.append(ref)
        pl = m["per_label"][name]
        assert pl["auc"]["value"] == pytest.approx(ref)
        assert pl["n"] == keep.sum() and pl["n_masked"] == n - keep.sum()
        assert pl["n_positive"] == int(np.nansum(y[:, j]))
        assert pl["auc"]["bootstrap_ci"][0] <= ref <= pl["auc"]["bootstrap_ci"][1]
    assert m["per_label"]["Pleural Effusion"]["auc"] == {"value": None, "bootstrap_ci": None}
    assert m["mean_auc"] == {"value": pytest.approx(np.mean(expected)), "n_labels": 3}
    json.dumps(m, allow_nan=False)
    with pytest.raises(CXRInputError):  # CheXpert uncertain label not mapped
        multilabel_metrics(np.where(np.isnan(y), -1.0, y), p, names)


def test_class_thresholds_decide_by_the_served_rule():
    from sklearn.metrics import confusion_matrix

    from cxr_tf.errors import CXRInputError
    from cxr_tf.evaluation.calibration import decide
    from cxr_tf.export import decision_rule

    rng = np.random.default_rng(0)
    prob = rng.dirichlet([1, 1, 1], 300)
    y = rng.integers(0, 3, 300)
    thr = [0.6, 0.2, None]  # "c" never passes on its own: it is chosen only as the arg-max fallback
    m = classification_metrics(y, prob, ["a", "b", "c"], class_thresholds=thr, n_boot=0)
    pred = decide(prob, thr)
    assert (pred != prob.argmax(1)).any()
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    served = decision_rule(prob.astype(np.float32), class_thresholds=[0.6, 0.2, np.inf])
    np.testing.assert_array_equal(pred, served)
    assert m["class_thresholds"] == {"a": 0.6, "b": 0.2, "c": None}
    assert "at or above its threshold" in m["decision_rule"] and "c >= never" in m["decision_rule"]
    with pytest.raises(CXRInputError, match="one value per class"):
        classification_metrics(y, prob, ["a", "b", "c"], class_thresholds=[0.5, 0.5], n_boot=0)
    with pytest.raises(CXRInputError, match="not both"):
        classification_metrics(y % 2, prob[:, :2] / prob[:, :2].sum(1, keepdims=True), ["a", "b"], threshold=0.5,
                               class_thresholds=[0.5, 0.5], n_boot=0)
