"""Seed variability: mean and standard deviation of every variant's validation macro F1 (of the
chosen checkpoint) and test metrics over the experiments that differ only in `train.seed`.

    dvc exp run --queue -S 'train.seed=1,2,3'
    dvc queue start -j 2        # then wait until `dvc queue status` shows them done
    python -m src.seeds         # reads `dvc exp show --json`; or: python -m src.seeds FILE.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict

# (column, path in metrics/<variant>.json)
SCORES = (("val macro F1", ("train", "best", "val_f1_macro")),
          ("test accuracy", ("test", "accuracy")), ("test macro F1", ("test", "f1_macro")),
          ("test weighted F1", ("test", "f1_weighted")),
          ("leak-free weighted F1", ("test_leak_free", "f1_weighted")))


def runs(shown: list) -> list[dict]:
    """Every commit and finished experiment of `dvc exp show --json` that has params and
    metrics. Queued and running experiments are listed with their baseline's metrics: skipped.
    A metrics file not yet written (a commit that never ran) comes with an error: skipped."""
    found = []
    for commit in shown:
        entries = [commit] + [e["revs"][0] for e in commit.get("experiments") or []
                              if (e.get("executor") or {}).get("state", "success") == "success"]
        for entry in entries:
            data = entry.get("data") or {}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data")
            metrics = {path: m["data"] for path, m in (data.get("metrics") or {}).items()
                       if m.get("data")}
            if params and metrics:
                found.append({"name": entry.get("name") or entry["rev"][:7], "params": params,
                              "metrics": metrics})
    return found


def seed_groups(found: list[dict]) -> dict[str, list[dict]]:
    """Runs keyed by their params without train.seed; one run per seed. Experiments with the
    same params and seed that ran different variants (`evaluate@cnn`, `evaluate@resnet50`) are
    merged into that run; where two ran the same variant, the first listed (the newest) counts."""
    groups = defaultdict(dict)
    for run in found:
        params = json.loads(json.dumps(run["params"]))
        seed = params["train"].pop("seed")
        merged = groups[json.dumps(params, sort_keys=True)].setdefault(seed, {**run, "metrics": {}})
        merged["metrics"] = {**run["metrics"], **merged["metrics"]}
    return {key: list(by_seed.values()) for key, by_seed in groups.items() if len(by_seed) > 1}


def flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def distinguishing(groups: dict) -> dict[str, str]:
    """Per group, the params on which the groups disagree, as `key=value` (empty if one group)."""
    flats = {key: flat(json.loads(key)) for key in groups}
    keys = sorted({k for f in flats.values() for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    return {key: " ".join(f"{k}={f.get(k)}" for k in differ) for key, f in flats.items()}


def lookup(metrics: dict | None, path: tuple):
    for key in path:
        if not isinstance(metrics, dict):
            return None
        metrics = metrics.get(key)
    return metrics


def summary_table(group: list[dict]) -> str:
    variants = [v for v in group[0]["params"]["variants"]] + ["floor"]
    seeds = sorted(r["params"]["train"]["seed"] for r in group)
    lines = [f"Seeds {seeds}: mean ± standard deviation over {len(group)} runs", "",
             "| variant | " + " | ".join(column for column, _ in SCORES) + " |",
             "|" + " --- |" * (len(SCORES) + 1)]
    for v in variants:
        cells = []
        for _, path in SCORES:
            values = [lookup(r["metrics"].get(f"metrics/{v}.json"), path) for r in group]
            values = [x for x in values if x is not None]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
                         if len(values) > 1 else "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shown", nargs="?", help="saved `dvc exp show --json` output")
    args = parser.parse_args(argv)
    if args.shown:
        text = open(args.shown).read()
    else:
        result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if result.returncode:
            print(f"error: dvc exp show failed: {result.stderr.strip().splitlines()[-1]}",
                  file=sys.stderr)
            return 1
        text = result.stdout
    groups = seed_groups(runs(json.loads(text)))
    if not groups:
        print("error: no experiments that differ only in train.seed; run "
              "dvc exp run --queue -S 'train.seed=1,2,3' and dvc queue start first", file=sys.stderr)
        return 1
    labels = distinguishing(groups)
    print("\n".join((f"{labels[key]}\n" if labels[key] else "") + summary_table(group)
                    for key, group in groups.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
