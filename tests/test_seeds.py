import json

from src.seeds import main, runs, seed_groups


def experiment(name, seed, lr, f1, variant="cnn"):
    params = {"model": "cnn", "train": {"seed": seed, "lr": lr},
              "variants": {"cnn": {}, "resnet50": {}}}
    scores = {"accuracy": f1, "f1_macro": f1, "f1_weighted": f1}
    metrics = {f"metrics/{variant}.json": {"data": {
        "test": scores, "test_leak_free": scores, "train": {"best": {"val_f1_macro": f1 - 0.1}}}}}
    return {"rev": name * 7, "name": name,
            "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def shown():
    base = experiment("base", 42, 0.001, 0.50)
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
    assert sorted(r["name"] for r in groups[0]) == ["a", "b", "base"]  # not the running d
    assert sorted(r["name"] for r in groups[1]) == ["c", "e"]  # f and g merged into them
    assert sorted(groups[1][0]["metrics"]) == ["metrics/cnn.json", "metrics/resnet50.json"]


def test_table_has_mean_and_standard_deviation(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    first, second = out.split("train.lr=")[1:]
    assert first.startswith("0.001\nSeeds [1, 2, 42]")
    # mean and sample std: validation 0.4, 0.5, 0.6; test 0.5, 0.6, 0.7
    assert "| cnn | 0.500 ± 0.100 | 0.600 ± 0.100 |" in first
    assert second.startswith("0.01\nSeeds [1, 2]") and "| cnn | 0.880 ± 0.014 |" in second
    assert "| resnet50 | 0.450 ± 0.071 | 0.550 ± 0.071 |" in second  # same params and seeds
