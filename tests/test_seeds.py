import json

import pytest

from tools.seeds import CURVES, curve_targets, main, parse_curves, runs, seed_groups


def experiment(name, seed, lr, f1, variant="cnn", precision="float32"):
    params = {"model": "cnn", "train": {"seed": seed, "lr": lr},
              "variants": {"cnn": {}, "resnet50": {}}}
    scores = {"accuracy": f1, "f1_macro": f1, "f1_weighted": f1}
    metrics = {f"metrics/{variant}.json": {"data": {
        "test": scores, "test_leak_free": scores,
        "train": {"best": {"val_f1_macro": f1 - 0.1}, "device": "cpu", "precision": precision}}}}
    return {"rev": name * 7, "name": name,
            "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def shown():
    base = experiment("base", 42, 0.001, 0.50, precision="bfloat16")
    base["experiments"] = [{"revs": [experiment(n, s, 0.001, f)]}
                           for n, s, f in (("a", 1, 0.60), ("b", 2, 0.70))]
    base["experiments"] += [{"revs": [experiment(n, s, 0.01, f)]}  # another recipe
                            for n, s, f in (("c", 1, 0.99), ("e", 2, 0.97))]
    base["experiments"] += [{"revs": [experiment(n, s, 0.01, f, "resnet50")]}  # evaluate@resnet50
                            for n, s, f in (("f", 1, 0.50), ("g", 2, 0.60))]
    base["experiments"].append({"revs": [experiment("d", 3, 0.001, 0.50)],  # still running
                                "executor": {"state": "running"}})
    never_ran = experiment("main", 42, 0.01, 0.0)  # a commit whose metrics were never written
    never_ran["data"]["metrics"] = {"metrics/cnn.json": {"error": {"type": "FileNotFoundError"}}}
    return [{"rev": "workspace", "data": {}}, base, never_ran]


def test_runs_are_grouped_by_everything_but_the_seed():
    groups = list(seed_groups(runs(shown())).values())
    assert len(groups) == 2
    names = lambda group, v="cnn": sorted(r["sources"][f"metrics/{v}.json"] for r in group)
    assert names(groups[0]) == ["a", "b", "base"]  # not the running d
    assert names(groups[1]) == ["c", "e"]  # f and g merged into them
    assert names(groups[1], "resnet50") == ["f", "g"]
    assert sorted(groups[1][0]["metrics"]) == ["metrics/cnn.json", "metrics/resnet50.json"]


def test_a_metrics_file_the_experiment_did_not_rewrite_is_not_its_own():
    data = shown()
    base = data[1]
    # evaluate@resnet50 with seed 1, listed first (newest): its cnn file is still the baseline's
    h = experiment("h", 1, 0.001, 0.80, "resnet50")
    h["data"]["metrics"] |= base["data"]["metrics"]
    base["experiments"].insert(0, {"revs": [h]})
    same_lr = next(iter(seed_groups(runs(data)).values()))
    seed_1 = next(r for r in same_lr if r["params"]["train"]["seed"] == 1)
    assert seed_1["sources"] == {"metrics/cnn.json": "a", "metrics/resnet50.json": "h"}
    assert seed_1["metrics"]["metrics/cnn.json"]["test"]["f1_macro"] == 0.60  # a's, not base's


def test_table_has_mean_and_standard_deviation(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    first, second = out.split("train.lr=")[1:]
    assert first.startswith("0.001\nSeeds [1, 2, 42]")
    # what the runs ran on (seed 42 in bfloat16); mean and sample std: validation 0.4, 0.5,
    # 0.6; test 0.5, 0.6, 0.7
    assert "| cnn | 1, 2, 42 | cpu bfloat16, cpu float32 | 0.500 ± 0.100 | 0.600 ± 0.100 |" \
        in first
    assert "| resnet50 |" not in first  # no run of the group evaluated it
    assert second.startswith("0.01\nSeeds [1, 2]")
    assert "| cnn | 1, 2 | cpu float32 | 0.880 ± 0.014 |" in second
    # same params and seeds
    assert "| resnet50 | 1, 2 | cpu float32 | 0.450 ± 0.071 | 0.550 ± 0.071 |" in second


def plots_diff(curves, variant="cnn"):
    """What `dvc plots diff --json` prints for the DVCLive plots of these runs."""
    data = {}
    for (column, path), target in zip(CURVES, curve_targets(variant)):
        field = path.split("/")[-1]
        values = [{"step": step, field: str(value), "rev": name}
                  for name, by_column in curves.items()
                  for step, value in enumerate(by_column[column])]
        data[target] = [{"type": "vega", "revisions": list(curves),
                         "content": {"data": {"values": values}}}]
    return {"data": data}


def test_curves_compare_recipes_over_the_epochs_both_runs_of_a_seed_trained(
        tmp_path, monkeypatch, capsys):
    # lr=0.001 runs a (seed 1), b (seed 2); lr=0.01 runs c (seed 1), e (seed 2)
    curves = {"a": {"val macro F1": [0.1, 0.3, 0.5], "train loss": [1.0, 0.8, 0.6]},
              "c": {"val macro F1": [0.4, 0.6], "train loss": [0.9, 0.7]},
              "b": {"val macro F1": [0.2, 0.2, 0.2, 0.2], "train loss": [1.0, 1.0, 1.0, 1.0]},
              "e": {"val macro F1": [0.4, 0.4, 0.4, 0.9], "train loss": [0.5, 0.5, 0.5, 0.5]},
              "base": {"val macro F1": [0.9], "train loss": [0.1]}}
    assert parse_curves(plots_diff(curves), "cnn") == curves
    calls = []
    monkeypatch.setattr("tools.seeds.dvc_json", lambda args: calls.append(args) or plots_diff(curves))
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main([str(path), "--curves", "cnn"]) == 0
    assert calls[0][:2] == ["plots", "diff"] and set(calls[0][2:7]) == {"base", "a", "b", "c", "e"}
    table = capsys.readouterr().out.split("epoch by epoch")[1]
    assert "| seed | epochs | val macro F1: train.lr=0.001 | val macro F1: train.lr=0.01 |" in table
    assert "| 1 | 2 | 0.200 | 0.500 | 0.900 | 0.800 |" in table  # a and c: their first 2 epochs
    assert "| 2 | 4 | 0.200 | 0.525 | 1.000 | 0.500 |" in table
    assert "| mean ± std |  | 0.200 ± 0.000 | 0.512 ± 0.018 |" in table
    assert "| 42 |" not in table  # base has no seed-42 counterpart


def test_only_keeps_the_runs_with_that_param(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main([str(path), "--only", "train.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Seeds [1, 2]") and "train.lr=0.001" not in out
    with pytest.raises(SystemExit):
        main([str(path), "--only", "train.lr"])
    assert "'train.lr' is not KEY=VALUE" in capsys.readouterr().err


def test_out_writes_the_tables_under_the_command_that_made_them(tmp_path, capsys):
    path, out = tmp_path / "shown.json", tmp_path / "seeds.md"
    path.write_text(json.dumps(shown()))
    assert main([str(path), "--only", "train.lr=0.01", "--out", str(out)]) == 0
    command_line, blank, *tables = out.read_text().splitlines()
    # Files outside the repository are the measuring machine's own: shown by their names
    assert command_line == \
        "`python -m tools.seeds /path/to/shown.json --only train.lr=0.01 --out /path/to/seeds.md`"
    assert blank == "" and "\n".join(tables) == capsys.readouterr().out.strip()


def test_a_file_that_is_not_json_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text("Experiment  Created\n")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: cannot read it as `dvc exp show --json` output")
    assert len(err.strip().splitlines()) == 1


def test_curves_use_the_seeds_that_evaluated_the_variant(tmp_path, monkeypatch, capsys):
    data = shown()
    data[1]["experiments"].insert(0, {"revs": [experiment("h", 1, 0.001, 0.3, "resnet50")]})
    curves = {name: {"val macro F1": [0.5], "train loss": [1.0]} for name in "fgh"}
    monkeypatch.setattr("tools.seeds.dvc_json", lambda args: plots_diff(curves, "resnet50"))
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(data))
    assert main([str(path), "--curves", "resnet50"]) == 0
    summary, table = capsys.readouterr().out.split("epoch by epoch")
    assert "| resnet50 | 1 | cpu float32 | 0.200 | 0.300 |" in summary  # one seed: no std
    assert "val macro F1: train.lr=0.001 | val macro F1: train.lr=0.01 |" in table
    assert "| 1 | 1 | 0.500 | 0.500 |" in table and "| 2 |" not in table  # h ran seed 1 only


def test_by_seed_sets_the_recipes_side_by_side_with_their_difference(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main([str(path), "--by-seed", "cnn"]) == 0
    table = capsys.readouterr().out.split("cnn, seed by seed")[1]
    assert "| seed | runs | val macro F1 | test weighted F1 | leak-free weighted F1 |" in table
    # lr=0.001: a (seed 1, 0.60), b (seed 2, 0.70); lr=0.01: c (0.99), e (0.97);
    # validation scores 0.1 below test
    assert "| 1 | train.lr=0.001 | 0.500 | 0.600 | 0.600 |" in table
    assert "| 1 | train.lr=0.01 | 0.890 | 0.990 | 0.990 |" in table
    assert "| 1 | train.lr=0.01 minus train.lr=0.001 | +0.390 | +0.390 | +0.390 |" in table
    assert "| 2 | train.lr=0.01 minus train.lr=0.001 | +0.270 | +0.270 | +0.270 |" in table
    assert "| 42 |" not in table  # only the lr=0.001 group ran seed 42
    assert main([str(path), "--by-seed", "inception_v3"]) == 1
    assert capsys.readouterr().err == "error: no seed group evaluated inception_v3\n"
