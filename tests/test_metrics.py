import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import nn

from src.lib.config import STUDY_CLASSES
from src.lib.explain import grad_cam
from src.lib.inference import Classifier, classify
from src.lib.metrics import (
    bootstrap_ci, expected_calibration_error, fit_temperature, format_p, headline, mcnemar, report,
    split_metrics
)
from src.lib.scores import confusion, scores_from_confusion


def test_headline_matches_a_hand_computed_report():
    targets = [0, 0, 1, 1, 2, 3]
    predictions = [0, 1, 1, 1, 2, 2]
    h = headline(report(targets, predictions, STUDY_CLASSES), STUDY_CLASSES)
    assert h["accuracy"] == round(4 / 6, 4)
    # F1 per class: 2/3, 4/5, 2/3, 0
    assert h["f1_per_class"] == {"adenocarcinoma": 0.6667, "large_cell_carcinoma": 0.8,
                                 "normal": 0.6667, "squamous_cell_carcinoma": 0.0}
    assert h["f1_macro"] == round((2 / 3 + 0.8 + 2 / 3) / 4, 4)
    assert h["f1_weighted"] == round((2 * 2 / 3 + 2 * 0.8 + 2 / 3) / 6, 4)


def test_confusion_counts_agree_with_sklearn():
    rng = np.random.default_rng(1)
    targets, predictions = rng.integers(0, 4, 200), rng.integers(0, 3, 200)  # 3 never predicted
    assert (confusion(targets, predictions, 4) ==
            confusion_matrix(targets, predictions, labels=[0, 1, 2, 3])).all()


def test_scores_from_confusion_agree_with_sklearn():
    rng = np.random.default_rng(1)
    targets, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    acc, macro, weighted = scores_from_confusion(confusion(targets, predictions, 4))
    assert acc == pytest.approx(accuracy_score(targets, predictions))
    assert macro == pytest.approx(f1_score(targets, predictions, average="macro"))
    assert weighted == pytest.approx(f1_score(targets, predictions, average="weighted"))


def test_bootstrap_intervals():
    targets = np.repeat(np.arange(4), 25)
    assert bootstrap_ci(targets, targets, 4) == {"accuracy": (1.0, 1.0), "f1_macro": (1.0, 1.0),
                                              "f1_weighted": (1.0, 1.0)}
    predictions = targets.copy()
    predictions[::4] = (predictions[::4] + 1) % 4  # 75% right
    ci = bootstrap_ci(targets, predictions, 4, seed=3)
    assert ci == bootstrap_ci(targets, predictions, 4, seed=3)  # seeded
    low, high = ci["accuracy"]
    assert low < 0.75 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(.75 * .25 / 100),
                                                             abs=0.03)


@pytest.mark.parametrize("only_a, only_b, p", [
    (1, 5, 2 * (1 + 6) / 2 ** 6),       # exact binomial, n = 6
    (0, 10, 2 / 2 ** 10),
    (3, 3, 1.0),
    (0, 0, 1.0),
])
def test_mcnemar_exact_p_values(only_a, only_b, p):
    both = 7
    targets = np.zeros(only_a + only_b + both + 4, dtype=int)
    a = np.r_[np.zeros(only_a), np.ones(only_b), np.zeros(both), np.ones(4)]
    b = np.r_[np.ones(only_a), np.zeros(only_b), np.zeros(both), np.ones(4)]
    result = mcnemar(targets, a, b)
    assert (result["only_a"], result["only_b"]) == (only_a, only_b)
    assert result["p_value"] == pytest.approx(p, abs=1e-6)


def test_mcnemar_p_values_far_below_one_in_a_million_are_not_rounded_to_zero():
    targets = np.zeros(126, dtype=int)
    right, wrong = np.zeros(126), np.ones(126)
    right[:9], wrong[:9] = 1, 0  # A alone right on 117 images, B alone on 9: the CNN vs the floor
    p = mcnemar(targets, wrong, right)["p_value"]
    assert 0 < p < 1e-20
    assert format_p(p) == f"{p:.1e}" and format_p(0.01234) == "0.0123"


def test_split_metrics_give_intervals_as_scalars_that_dvc_displays():
    targets = np.repeat(np.arange(4), 10)
    m = split_metrics(targets, np.eye(4)[targets], STUDY_CLASSES, seed=0)
    assert m["f1_weighted_ci95_low"] == m["f1_weighted_ci95_high"] == 1.0
    assert not any(isinstance(v, (list, tuple)) for v in m.values())


def test_expected_calibration_error():
    probabilities = np.tile([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3], (10, 1))
    half_right = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probabilities, half_right)["ece"] == pytest.approx(0.4)
    calibrated = np.tile([0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], (10, 1))
    assert expected_calibration_error(calibrated, [0] * 8 + [1] * 2)["ece"] == pytest.approx(0)


def test_temperature_cools_an_overconfident_model():
    torch.manual_seed(0)
    targets = torch.randint(0, 4, (400,))
    logits = torch.randn(400, 4)
    logits[torch.arange(400), targets] += 1.0
    assert fit_temperature(logits * 5, targets) > 2  # too sharp: T > 1 softens it
    assert fit_temperature(logits / 5, targets) < 0.5
    # a head with random frozen features can put its logits 1e9 apart: its T is of that size
    assert fit_temperature(logits * 1e9, targets) == pytest.approx(
        fit_temperature(logits, targets) * 1e9, rel=1e-3)


class SureHead(nn.Module):
    """Class 0 by a margin of 8 on dark images; class 1 by 40 on bright ones, where the softmax
    of the true class 0 (e^-40, about 4e-18) is below the 1e-12 a log would once be clamped at."""
    def forward(self, x):
        bright = (x[:, :1, 0, 0] > 0).float()
        return (1 - bright) * torch.tensor([8.0, 0, 0, 0]) + bright * torch.tensor([0, 40.0, 0, 0])


def test_temperature_is_fitted_on_the_logits_classify_returns_not_on_capped_probabilities():
    images = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    images[::8] = 255  # one in eight confidently wrong
    targets = torch.zeros(64, dtype=torch.long)
    clf = Classifier(SureHead(), {"arch": "cnn", "classes": STUDY_CLASSES}, torch.device("cpu"),
                     None)
    logits, _ = classify(clf, images)
    assert logits[0].tolist() == [0, 40, 0, 0] and logits[1].tolist() == [8, 0, 0, 0]
    capped = logits.softmax(1).clamp_min(1e-12).log()  # how evaluate fitted it before
    assert fit_temperature(logits, targets) == pytest.approx(13.31, abs=0.01)
    # the capped sure-wrong answers looked half as wrong: half the temperature, too sure after
    assert fit_temperature(capped, targets) == pytest.approx(6.60, abs=0.01)


def test_grad_cam_is_input_sized_and_peaks_on_the_planted_feature():
    detector = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(detector.weight, 1 / 9)
    relu, classifier = nn.ReLU(), nn.Linear(1, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # class 0: "the feature is there"
    model = nn.Sequential(detector, relu, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier).eval()
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 20:26, 4:10] = 1.0  # the planted feature, bottom left
    heatmap, logits = grad_cam(model, relu, x, target=torch.tensor([0]))
    assert heatmap.shape == (1, 32, 32) and logits.shape == (1, 2)
    row, col = divmod(int(heatmap[0].argmax()), 32)
    assert 20 <= row < 26 and 4 <= col < 10
    assert heatmap[0, :10, 16:].max() == 0  # nothing where the image is empty


def test_holm_adjusts_the_kth_smallest_of_m_p_values_by_m_minus_k_plus_one():
    from src.lib.metrics import holm
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1, then kept monotone: 0.04 becomes 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def write_rows(name: str, rows: list[tuple[str, str, str]]) -> None:
    from src.lib.io import write_json
    write_json(Path(f"predictions/{name}.json"), [
        {"file": f, "actual": actual, "predicted": predicted, "leak_free": True,
         "probabilities": {"a": 0.5, "b": 0.5}} for f, actual, predicted in rows])


def test_compare_pairs_predictions_by_file_and_refuses_different_images(in_tmp):
    from src.compare import paired
    from src.lib.errors import UserError
    write_rows("ours", [("x.png", "a", "a"), ("y.png", "b", "a")])
    write_rows("released", [("y.png", "b", "b"), ("x.png", "a", "b")])  # another order
    ours, theirs = paired("ours", "released")
    assert ours["files"].tolist() == ["x.png", "y.png"] and theirs.tolist() == [1, 1]
    write_rows("other", [("x.png", "a", "a"), ("z.png", "b", "a")])
    with pytest.raises(UserError, match="predictions/other.json and predictions/released.json "
                                        "do not list the same test images"):
        paired("other", "released")


def test_bootstrap_resamples_whole_groups_so_copies_do_not_narrow_the_interval():
    # 24 images, 3 in 4 right, each present 4 times: by image the interval is that of 96
    # independent images, by group that of the 24 there are, about twice as wide
    targets = np.arange(24) % 4
    predictions = np.where(np.arange(24) % 4 == 0, (targets + 1) % 4, targets)
    copies = np.repeat(np.arange(24), 4)
    by_image = bootstrap_ci(targets[copies], predictions[copies], 4, seed=3)["accuracy"]
    by_group = bootstrap_ci(targets[copies], predictions[copies], 4, groups=copies,
                            seed=3)["accuracy"]
    assert (by_group[1] - by_group[0]) > 1.6 * (by_image[1] - by_image[0])
