import json

import pytest
from scipy import stats

from tools.crossval import corrected_t_test, main


def experiment(name, fold, seed, framing, f1, loss=1.0):
    params = {"model": "cnn", "prepare": {"fold": fold, "folds": 5},
              "train": {"seed": seed}, "variants": {"cnn": {"framing": framing}}}
    metrics = {"dvclive/cnn/metrics.json": {"data": {
        "best_epoch": 3, "device": "cpu", "precision": "float32", "best": {"val_f1_macro": f1, "val_f1_weighted": f1, "val_acc": f1,
                                  "val_loss": loss}}}}
    return {"rev": name * 7, "name": name,
            "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


BODY = (0.80, 0.85, 0.70, 0.90, 0.75)
LETTERBOX = (0.78, 0.86, 0.60, 0.85, 0.74)


def shown():
    base = experiment("base", None, 42, "body", 0.99)  # the data's own split: not a fold
    base["experiments"] = [{"revs": [experiment(f"b{k}", k, 42, "body", f)]}
                           for k, f in enumerate(BODY)]
    base["experiments"] += [{"revs": [experiment(f"l{k}", k, 42, "letterbox", f, loss=2.0)]}
                            for k, f in enumerate(LETTERBOX)]
    return [{"rev": "workspace", "data": {}}, base]


def test_recipes_are_compared_fold_by_fold_on_validation(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main(["cnn", str(path)]) == 0
    summary, paired = capsys.readouterr().out.split("run by run")
    assert "| variants.cnn.framing=body | 0, 1, 2, 3, 4 | 42 | cpu float32 | 0.800 ± 0.079 |" in summary
    assert "| variants.cnn.framing=letterbox | 0, 1, 2, 3, 4 | 42 | cpu float32 | 0.766 ± 0.105 |" in summary
    assert "0.99" not in summary  # the baseline is not a fold
    assert "| 2 | 42 | 0.700 | 0.600 | -0.100 | 1.000 | 2.000 | +1.000 |" in paired
    differences = [b - a for a, b in zip(BODY, LETTERBOX)]
    p = corrected_t_test(differences, 1 / 4)
    assert f"-0.034 ± 0.043 over 5 runs, higher in 1 of them; corrected resampled t-test " \
           f"p = {p:.2g}" in paired


def test_the_corrected_test_is_wider_than_the_plain_paired_t_test():
    differences = [0.02, 0.05, -0.01, 0.04, 0.03]
    plain = stats.ttest_1samp(differences, 0).pvalue
    assert corrected_t_test(differences, 0) == pytest.approx(plain)
    assert corrected_t_test(differences, 1 / 4) > plain


def test_no_cross_validation_runs_is_one_line(tmp_path, capsys):
    data = shown()
    data[1]["experiments"] = []
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(data))
    assert main(["cnn", str(path)]) == 1
    assert capsys.readouterr().err.startswith("error: no cross-validation runs of cnn; run dvc "
                                              "exp run --queue -S 'prepare.fold=0,1,2,3,4'")
