"""Classification metrics as the study reports them, on the full test split and its leak-free part."""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from src.lib.io import read_json, write_json
from src.lib.paths import METRICS_DIR, PREDICTIONS_DIR
from src.lib.scores import scores_from_confusion


def _classification_report(targets, predictions, classes: list[str], **how):
    # Imported here: sklearn takes a second or more to import, and only the stages that write
    # a report (evaluate, floor) need it, not train, compare or release.
    from sklearn.metrics import classification_report
    return classification_report(targets, predictions, labels=list(range(len(classes))),
                                 target_names=list(classes), zero_division=0, **how)


def report(targets, predictions, classes: list[str]) -> dict:
    """sklearn's classification report: per class, accuracy, macro and weighted averages."""
    return _classification_report(targets, predictions, classes, output_dict=True)


def report_text(targets, predictions, classes: list[str]) -> str:
    return _classification_report(targets, predictions, classes, digits=3)


def headline(rep: dict, classes: list[str]) -> dict:
    """The few numbers `dvc metrics diff` compares: accuracy, macro and weighted F1, per-class F1."""
    return {"accuracy": round(rep["accuracy"], 4),
            "f1_macro": round(rep["macro avg"]["f1-score"], 4),
            "f1_weighted": round(rep["weighted avg"]["f1-score"], 4),
            "precision_macro": round(rep["macro avg"]["precision"], 4),
            "recall_macro": round(rep["macro avg"]["recall"], 4),
            "f1_per_class": {c: round(rep[c]["f1-score"], 4) for c in classes},
            "support": int(rep["macro avg"]["support"])}


def bootstrap_ci(targets, predictions, num_classes: int, *, groups=None, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals for accuracy, macro F1 and weighted F1: the test images
    are resampled with replacement `resamples` times (seeded, so reproducible), a whole group at
    a time where `groups` are given (prepare's: identical images, near-duplicates, one
    patient's slices), so that images that are not independent do not narrow the interval."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    _, groups = np.unique(np.arange(len(targets)) if groups is None else np.asarray(groups),
                          return_inverse=True)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    drawn = np.random.default_rng(seed).integers(0, n_groups, (resamples, n_groups))
    times = np.stack([np.bincount(row, minlength=n_groups) for row in drawn])[:, groups]
    cells = np.eye(num_classes ** 2)[targets * num_classes + predictions]  # [images, C*C]
    cms = (times @ cells).reshape(resamples, num_classes, num_classes)
    scores = scores_from_confusion(cms)
    low, high = np.percentile(scores, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {name: (round(float(lo), 4), round(float(hi), 4))
            for name, lo, hi in zip(("accuracy", "f1_macro", "f1_weighted"), low, high)}


def mcnemar(targets, predictions_a, predictions_b) -> dict:
    """Exact McNemar test on paired predictions of the same images: b = images only A gets
    right, c = only B; two-sided binomial p-value under H0 that both err equally often."""
    targets = np.asarray(targets)
    right_a, right_b = np.asarray(predictions_a) == targets, np.asarray(predictions_b) == targets
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = b + c
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n  # exact integers
    return {"only_a": b, "only_b": c, "p_value": min(1.0, 2 * tail)}


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of p-values for testing several hypotheses at once (Holm
    1979): the k-th smallest of m is multiplied by m - k + 1, kept monotone, capped at 1. It
    controls the chance of any false rejection among them at the nominal level."""
    order = np.argsort(p_values, kind="stable")
    m, adjusted, running = len(order), [0.0] * len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def expected_calibration_error(probabilities: np.ndarray, targets, bins: int = 15) -> dict:
    """ECE over equal-width confidence bins, with the per-bin figures a reliability diagram
    draws."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for i in range(bins):
        mask = which == i
        if mask.any():
            gap = abs(correct[mask].mean() - confidence[mask].mean())
            ece += mask.mean() * gap
            table.append({"bin": i, "lower": round(edges[i], 4), "upper": round(edges[i + 1], 4),
                          "count": int(mask.sum()), "accuracy": float(correct[mask].mean()),
                          "confidence": float(confidence[mask].mean())})
    return {"ece": round(float(ece), 4), "bins": table}


def fit_temperature(logits, targets) -> float:
    """The temperature T minimizing the negative log-likelihood of softmax(logits / T), fitted on
    validation data (one parameter, so the predicted class never changes). The likelihood is
    convex in 1/T, so a bounded scalar search finds its minimum. The bounds are wide: a head whose
    logits lie 1e9 apart needs a T of that size, and capping it would report such a head's raw
    calibration as its calibration after scaling; below, a head right on every image would be
    sharpened without end."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)

    def nll(log_t: float) -> float:
        log_p = log_softmax(logits / math.exp(log_t), axis=1)
        return -log_p[np.arange(len(targets)), targets].mean()
    fit = minimize_scalar(nll, bounds=(math.log(0.01), math.log(1e12)), method="bounded",
                          options={"xatol": 1e-6})
    return math.exp(fit.x)


def split_metrics(targets, probabilities, classes: list[str], seed: int, scaled=None,
                  groups=None) -> dict:
    """Everything reported for one set of test images: the headline scores with bootstrap 95%
    intervals (resampling `groups`), and the calibration error (also after temperature scaling,
    when given)."""
    predictions = np.asarray(probabilities).argmax(1)
    out = headline(report(targets, predictions, classes), classes)
    for score, (low, high) in bootstrap_ci(targets, predictions, len(classes), groups=groups,
                                           seed=seed).items():
        # scalars, not a list: `dvc metrics show` and `dvc exp show` display only scalars
        out[f"{score}_ci95_low"], out[f"{score}_ci95_high"] = low, high
    out["ece"] = expected_calibration_error(probabilities, targets)["ece"]
    if scaled is not None:
        out["ece_scaled"] = expected_calibration_error(scaled, targets)["ece"]
    return out


def test_metrics(targets, probabilities, leak_free, classes: list[str], *, seed: int,
                 groups, scaled=None) -> dict:
    """split_metrics on the official test split and on its leak-free part; `groups`: each test
    image's group, as `prepare` wrote them."""
    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    part = (lambda a: None if a is None else np.asarray(a)[leak_free])
    return {"test": split_metrics(targets, probabilities, classes, seed, scaled, groups),
            "test_leak_free": split_metrics(targets[leak_free], probabilities[leak_free], classes,
                                            seed, part(scaled), part(groups))}


def with_interval(m: dict, score: str) -> str:
    """'0.924 (95% CI 0.890-0.950)' from a split's metrics."""
    return f"{m[score]:.3f} (95% CI {m[score + '_ci95_low']:.3f}-{m[score + '_ci95_high']:.3f})"


def format_p(p: float) -> str:
    """A p-value as it is: scientific notation below 1e-4, never rounded to 0."""
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def write_predictions(name: str, test: dict, probabilities: np.ndarray,
                      calibrated: np.ndarray | None = None) -> None:
    """predictions/<name>.json: per test image, the true and predicted labels, every
    class's probability and (after temperature scaling, where there is one) its calibrated
    probability; `compare` pairs them across variants by file and `dvc plots` draws the
    confusion matrix from them."""
    classes = test["classes"]
    rows = []
    for i, (f, y, lf, p) in enumerate(zip(test["files"], test["labels"].tolist(),
                                          test["leak_free"].tolist(), probabilities)):
        row = {"file": f, "actual": classes[y], "predicted": classes[int(p.argmax())],
               "leak_free": bool(lf), "probabilities": dict(zip(classes, np.round(p, 6).tolist()))}
        if calibrated is not None:
            row["calibrated"] = dict(zip(classes, np.round(calibrated[i], 6).tolist()))
        rows.append(row)
    write_json(PREDICTIONS_DIR / f"{name}.json", rows)


def read_predictions(name: str) -> dict[str, np.ndarray]:
    """A variant's test predictions: `files`, true and predicted classes (`targets`,
    `predictions`) and the `leak_free` mask, in test order."""
    rows = read_json(PREDICTIONS_DIR / f"{name}.json")
    classes = list(rows[0]["probabilities"]) if rows else []
    return {"files": np.array([r["file"] for r in rows]),
            "targets": np.array([classes.index(r["actual"]) for r in rows], dtype=int),
            "predictions": np.array([classes.index(r["predicted"]) for r in rows], dtype=int),
            "leak_free": np.array([r["leak_free"] for r in rows], dtype=bool)}


def read_metrics(name: str) -> dict:
    """metrics/<name>.json, written by `evaluate@<name>` (or `floor`)."""
    return read_json(METRICS_DIR / f"{name}.json")
