"""The numpy head and the metrics, checked against scikit-learn (fast: no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from tfguess.core.config import TrainConfig
from tfguess.core.errors import ConfigError
from tfguess.training.evaluation import classification_metrics
from tfguess.training.head import Adam, fit_head


def blobs(n_per: int, k: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 2
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + rng.normal(scale=spread, size=(k * n_per, dim))
    return x.astype(np.float32), y


def test_head_matches_sklearn_logistic_regression():
    """Same data, same L2 strength: the numpy head and scikit-learn's multinomial logistic
    regression reach the same probabilities (both minimise the same convex loss)."""
    x, y = blobs(80, 4, 16, 2.5, seed=0)
    xt, yt = blobs(40, 4, 16, 2.5, seed=1)
    l2 = 0.05
    config = TrainConfig(quick=True, epochs=2000, batch_size=len(y), learning_rate=0.02, l2=l2, dropout=0.0,
                         class_weights=False, patience=10_000, seed=0)
    fit = fit_head(x, y, 4, config, progress=False)
    # loss = mean CE + l2 * |W|^2  <=>  sklearn: C * sum CE + 0.5 |W|^2, so C = 1 / (2 * l2 * n)
    ref = LogisticRegression(C=1 / (2 * l2 * len(y)), max_iter=5000, tol=1e-10).fit(x, y)
    ours, theirs = fit.head(xt), ref.predict_proba(xt)
    assert np.abs(ours - theirs).max() < 0.005
    assert (ours.argmax(1) == theirs.argmax(1)).mean() == 1.0


def test_adam_matches_the_reference_update():
    """Two steps of our Adam against the textbook formula (Kingma & Ba, with Keras' epsilon)."""
    p = np.array([1.0, -2.0])
    adam = Adam([p], lr=0.1)
    grads = [np.array([0.5, -1.0]), np.array([0.2, 0.3])]
    m = v = np.zeros(2)
    expected = np.array([1.0, -2.0])
    for t, g in enumerate(grads, 1):
        adam.step([g.copy()])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr = 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        expected = expected - lr * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_early_stopping_keeps_the_best_epoch():
    x, y = blobs(30, 3, 8, 3.0, seed=2)
    xv, yv = blobs(10, 3, 8, 3.0, seed=3)
    config = TrainConfig(quick=True, epochs=400, patience=5, seed=0)
    fit = fit_head(x, y, 3, config, (xv, yv), progress=False)
    losses = [row["val_loss"] for row in fit.history]
    assert fit.best_epoch == int(np.argmin(losses)) + 1
    assert len(fit.history) <= fit.best_epoch + config.patience
    assert fit.history[-1]["epoch"] == len(fit.history)


def test_class_weights_balance_a_skewed_set():
    x, y = blobs(100, 2, 4, 4.0, seed=4)
    keep = np.r_[np.arange(100), np.arange(100, 110)]  # 100 of class 0, 10 of class 1
    xs, ys = x[keep], y[keep]
    weighted = fit_head(xs, ys, 2, TrainConfig(epochs=200, seed=0), progress=False)
    plain = fit_head(xs, ys, 2, TrainConfig(epochs=200, seed=0, class_weights=False), progress=False)
    recall = [(h.head(x[100:]).argmax(1) == 1).mean() for h in (weighted, plain)]
    assert recall[0] >= recall[1]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(5)
    labels = ["a", "b", "c", "d"]
    y = rng.integers(0, 4, 300)
    probs = rng.random((300, 4))
    probs[np.arange(300)[:200], y[:200]] += 1  # two thirds right
    m = classification_metrics(y, probs, labels)
    pred = probs.argmax(1)
    assert m["accuracy"] == round(accuracy_score(y, pred), 4)
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y, pred, labels=range(4)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for i, label in enumerate(labels):
        got = m["per_label"][label]
        assert (got["precision"], got["recall"], got["f1"]) == (
            round(p[i], 4), round(r[i], 4), round(f[i], 4))
        assert got["support"] == s[i]


def test_metrics_with_an_absent_label_and_no_rows():
    m = classification_metrics(np.array([0, 0, 1]), np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.]]),
                               ["x", "y", "z"])
    assert m["per_label"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert classification_metrics(np.array([], int), np.zeros((0, 3)), ["x", "y", "z"]) == {
        "n": 0, "accuracy": None}


@pytest.mark.parametrize("field,value", [
    ("validation_pct", 100), ("test_pct", -1), ("epochs", 0), ("batch_size", 0),
    ("learning_rate", 0), ("dropout", 1.0), ("engine", "fast"),
])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        TrainConfig(**{field: value})


def test_config_round_trips_and_ignores_unknown_keys():
    config = TrainConfig(epochs=7, backbone="efficientnet_lite2")
    assert TrainConfig.from_dict({**config.to_dict(), "from_the_future": 1}) == config


def test_an_eval_folder_is_the_test_set_unless_a_test_share_is_asked_for():
    assert TrainConfig().test_pct == 10
    assert TrainConfig(eval_dir="elsewhere").test_pct == 0
    assert TrainConfig(eval_dir="elsewhere", test_pct=5).test_pct == 5
    saved = TrainConfig(eval_dir="elsewhere").to_dict()
    assert TrainConfig.from_dict(saved).test_pct == 0
