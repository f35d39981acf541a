import numpy as np

from fedmm import metrics as M


def test_accuracy():
    assert M.accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75


def test_micro_and_macro_f1_hand_computed():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    # label 0: tp2 fp0 fn0 -> F1 1; label 1: tp1 fp0 fn1 -> 2/3; label 2: tp0 fp1 fn1 -> 0
    assert np.isclose(M.macro_f1(pred, labels), (1 + 2 / 3 + 0) / 3)
    # micro: tp3 fp1 fn2 -> 6 / 9
    assert np.isclose(M.micro_f1(pred, labels), 6 / 9)


def test_compute_uses_argmax_or_threshold():
    logits = np.array([[0.1, 2.0], [3.0, -1.0]])
    assert M.compute(["accuracy"], logits, np.array([1, 1])) == {"accuracy": 0.5}
    ml = M.compute(["micro_f1"], np.array([[1.0, -1.0]]), np.array([[1.0, 0.0]]))
    assert ml["micro_f1"] == 1.0
