"""Shared fixtures for evaluation tests (pure numpy; no TensorFlow)."""
import numpy as np
import pytest

# Hand-computed 3-class case. Confusion matrix (rows = true A, B, C):
#   A: [5, 1, 0]   B: [2, 3, 1]   C: [0, 1, 4]      N = 17, 12 correct
HAND_CM = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 4]])
HAND_NAMES = ["A", "B", "C"]


def _from_cm(cm):
    y_true, y_pred = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            y_true += [i] * int(cm[i, j])
            y_pred += [j] * int(cm[i, j])
    return np.array(y_true), np.array(y_pred)


@pytest.fixture
def hand_case():
    """(y_true, y_prob, names, cm) whose argmax reproduces HAND_CM."""
    y_true, y_pred = _from_cm(HAND_CM)
    y_prob = np.full((len(y_true), 3), 0.1)
    y_prob[np.arange(len(y_true)), y_pred] = 0.8
    return y_true, y_prob, HAND_NAMES, HAND_CM.copy()


@pytest.fixture
def noisy_3class():
    """A 3-class problem with informative but imperfect probabilities."""
    rng = np.random.default_rng(1)
    n = 240
    y = rng.integers(0, 3, n)
    p = rng.dirichlet([1, 1, 1], n)
    p[np.arange(n), y] += 0.6
    return y, p / p.sum(axis=1, keepdims=True), ["normal", "pneumonia", "covid"]


@pytest.fixture
def binary_case():
    rng = np.random.default_rng(2)
    n = 200
    y = (rng.random(n) < 0.3).astype(int)
    score = np.clip(0.35 * y + rng.normal(0.35, 0.18, n), 0, 1)
    return y, score
