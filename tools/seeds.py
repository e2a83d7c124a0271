"""Seed variability: each variant's scores, mean ± std over runs that differ only in the seed.

The scores: validation macro F1 of the chosen checkpoint, and the test metrics. Experiments
whose params differ in more than `train.seed` form separate groups, one table each.

    dvc exp run --queue -S 'train.seed=1,2,3'
    dvc queue start -j 2        # then wait until `dvc queue status` shows them done
    python -m tools.seeds         # reads `dvc exp show --json`; or: python -m tools.seeds FILE.json
    python -m tools.seeds --curves resnet50   # also compares the recipes epoch by epoch
    python -m tools.seeds --only train.lr=0.001   # only the runs with that param value
    python -m tools.seeds --by-seed resnet50  # also each seed's scores, recipe beside recipe

The chosen checkpoint depends on where early stopping ends each run, which on a noisy
validation loss can decide more than the recipe does. `--curves` therefore also compares, seed by
seed, each recipe's validation macro F1 and training loss averaged over the epochs that all runs
of that seed trained, from the per-epoch DVCLive plots (`dvc plots diff` reads them from the
cache of every experiment). `--by-seed` lists each recipe's final scores seed by seed, with
two recipes also their difference: the seed fixes the initial weights and the draws, so a recipe
that scores higher in every seed says more than two means whose spreads overlap.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict

from src.lib.errors import UserError, command
from src.lib.io import markdown_table
from tools.measurement import write_measurement

# (column, path in metrics/<variant>.json)
SCORES = (("val macro F1", ("train", "best", "val_f1_macro")),
          ("test accuracy", ("test", "accuracy")), ("test macro F1", ("test", "f1_macro")),
          ("test weighted F1", ("test", "f1_weighted")),
          ("leak-free weighted F1", ("test_leak_free", "f1_weighted")))
# the scores compared seed by seed
BY_SEED = [s for s in SCORES if s[0] in ("val macro F1", "test weighted F1",
                                         "leak-free weighted F1")]
# (column, DVCLive plot under dvclive/<variant>/plots/metrics/)
CURVES = (("val macro F1", "val/f1_macro"), ("train loss", "train/loss"))


def entry_metrics(entry: dict) -> dict:
    """A metrics file not yet written (a commit that never ran) comes with an error: skipped."""
    return {path: m["data"] for path, m in ((entry.get("data") or {}).get("metrics") or {}).items()
            if m.get("data")}


def runs(shown: list) -> list[dict]:
    """Every commit and finished experiment of `dvc exp show --json` that has params and
    metrics. Queued and running experiments are listed with their baseline's metrics: skipped.
    An experiment's metrics file identical to its baseline's was not rewritten by it (`dvc exp
    run evaluate@cnn` leaves the other variants' files as they were): not that run's either."""
    found = []
    for commit in shown:
        baseline = entry_metrics(commit)
        entries = [commit] + [e["revs"][0] for e in commit.get("experiments") or []
                              if (e.get("executor") or {}).get("state", "success") == "success"]
        for entry in entries:
            params = ((entry.get("data") or {}).get("params") or {}).get(
                "params.yaml", {}).get("data")
            metrics = entry_metrics(entry)
            if entry is not commit:
                metrics = {p: m for p, m in metrics.items() if m != baseline.get(p)}
            if params and metrics:
                name = entry.get("name") or entry["rev"][:7]
                found.append({"params": params, "metrics": metrics,
                              "sources": {path: name for path in metrics}})
    return found


def seed_groups(found: list[dict], over=("train.seed",)) -> dict[str, list[dict]]:
    """Runs keyed by their params without the replicate keys `over` (the seed; for
    cross-validation also the fold); one run per replicate. Experiments with the same params and
    replicate that ran different variants (`evaluate@cnn`, `evaluate@resnet50`) are merged into
    that run; where two ran the same variant, the first listed (the newest) counts. `sources`
    names the experiment each metrics file comes from."""
    groups = defaultdict(dict)
    for run in found:
        params = json.loads(json.dumps(run["params"]))
        replicate = tuple(params[group].pop(key, None)
                          for group, key in (name.split(".") for name in over))
        merged = groups[json.dumps(params, sort_keys=True)].setdefault(
            replicate, {**run, "metrics": {}, "sources": {}})
        merged["metrics"] = {**run["metrics"], **merged["metrics"]}
        merged["sources"] = {**run["sources"], **merged["sources"]}
    return {key: list(by_replicate.values()) for key, by_replicate in groups.items()
            if len(by_replicate) > 1}


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


def mean_std(values: list) -> str:
    """One run has no spread: its value alone, so that a single seed still shows."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def evaluated(group: list[dict], variant: str) -> list[dict]:
    """The runs of a group that evaluated `variant`, by seed."""
    return sorted((r for r in group if f"metrics/{variant}.json" in r["metrics"]),
                  key=lambda r: r["params"]["train"]["seed"])


def evaluating(groups: dict, variant: str) -> dict:
    """The groups that evaluated `variant`, each as its runs that did."""
    ran = {key: evaluated(group, variant) for key, group in groups.items()}
    ran = {key: group for key, group in ran.items() if group}
    if not ran:
        raise UserError(f"no seed group evaluated {variant}")
    return ran


def ran_on(summary: dict) -> str:
    """Device and precision as train recorded them in its summary: what `device` and
    `precision: auto` resolved to, which params alone do not tell."""
    recorded = [summary.get(key) for key in ("device", "precision")]
    return " ".join(str(x) for x in recorded if x is not None) or "-"


def summary_table(group: list[dict]) -> str:
    """One row per variant that a run of the group evaluated."""
    variants = [v for v in group[0]["params"]["variants"]] + ["floor"]
    seeds = sorted(r["params"]["train"]["seed"] for r in group)
    rows = []
    for v in variants:
        ran = evaluated(group, v)
        if not ran:
            continue
        machines = {ran_on(r["metrics"][f"metrics/{v}.json"].get("train", {})) for r in ran}
        cells = [v, ", ".join(str(r["params"]["train"]["seed"]) for r in ran),
                 ", ".join(sorted(machines))]
        for _, path in SCORES:
            values = [lookup(r["metrics"][f"metrics/{v}.json"], path) for r in ran]
            values = [x for x in values if x is not None]
            cells.append(mean_std(values) if values else "-")
        rows.append(cells)
    return (f"Seeds {seeds}: mean ± standard deviation over the seeds that evaluated each "
            "variant (one seed: its value)\n\n"
            + markdown_table(["variant", "seeds", "ran on", *(column for column, _ in SCORES)],
                             rows))


def seed_table(groups: dict, labels: dict, variant: str) -> str:
    """Per seed that every group evaluated `variant`: a row of scores per group, groups in the
    order of their labels, and with two groups a row of the second's minus the first's."""
    keys = sorted(groups, key=lambda key: labels[key])
    by_seed = [{r["params"]["train"]["seed"]: r["metrics"][f"metrics/{variant}.json"]
                for r in groups[key]} for key in keys]
    seeds = sorted(set.intersection(*(set(s) for s in by_seed)))
    names = [labels[key] or "runs" for key in keys]
    rows = []
    for seed in seeds:
        scores = [[lookup(s[seed], path) for _, path in BY_SEED] for s in by_seed]
        rows += [[seed, name, *(f"{x:.3f}" if x is not None else "-" for x in row)]
                 for name, row in zip(names, scores)]
        if len(names) == 2:
            rows.append([seed, f"{names[1]} minus {names[0]}",
                         *(f"{b - a:+.3f}" if None not in (a, b) else "-"
                           for a, b in zip(*scores))])
    return (f"{variant}, seed by seed\n\n"
            + markdown_table(["seed", "runs", *(column for column, _ in BY_SEED)], rows))


def curve_targets(variant: str) -> list[str]:
    return [f"dvclive/{variant}/plots/metrics/{path}.tsv" for _, path in CURVES]


def parse_curves(plots: dict, variant: str) -> dict[str, dict[str, list[float]]]:
    """`dvc plots diff --json` output -> per run name, per curve column, its value every epoch."""
    curves = defaultdict(dict)
    for (column, path), target in zip(CURVES, curve_targets(variant)):
        field = path.split("/")[-1]
        by_run = defaultdict(dict)
        for plot in plots["data"].get(target, []):
            for point in plot["content"]["data"]["values"]:
                by_run[point["rev"]][int(point["step"])] = float(point[field])
        for name, steps in by_run.items():
            curves[name][column] = [steps[k] for k in sorted(steps)]
    return curves


def matched_table(groups: dict, labels: dict, curves: dict, variant: str) -> str:
    """Per seed that every group ran: each curve's mean over the epochs all its runs trained."""
    by_seed = [{r["params"]["train"]["seed"]: r["sources"][f"metrics/{variant}.json"]
                for r in group} for group in groups.values()]
    seeds = sorted(set.intersection(*(set(s) for s in by_seed)))
    columns = [(c, i) for c, _ in CURVES for i in range(len(by_seed))]
    header = ["seed", "epochs", *(f"{c}: {labels[key] or 'runs'}" for c, _ in CURVES
                                  for key in groups)]
    rows, means = [], defaultdict(list)
    for seed in seeds:
        runs_of_seed = [curves.get(s[seed], {}) for s in by_seed]
        if not all(all(c in r for c, _ in CURVES) for r in runs_of_seed):
            continue  # a run that logged no curves (evaluated, but trained elsewhere)
        epochs = min(len(r[c]) for r in runs_of_seed for c, _ in CURVES)
        for c, i in columns:
            means[c, i].append(statistics.mean(runs_of_seed[i][c][:epochs]))
        rows.append([seed, epochs, *(f"{means[col][-1]:.3f}" for col in columns)])
    if len(means[columns[0]]) > 1:
        rows.append(["mean ± std", "", *(mean_std(means[col]) for col in columns)])
    return (f"{variant}, epoch by epoch: each curve's mean over the epochs that every run of the "
            "seed trained\n\n" + markdown_table(header, rows))


def dvc_json(args: list[str]):
    try:
        result = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("dvc: not found; install the requirements (pip install -r "
                        "requirements.txt)") from None
    if result.returncode:
        raise UserError(f"dvc {args[0]} {args[1]} failed: "
                        f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise UserError(f"dvc {args[0]} {args[1]} --json printed no JSON") from None


def read_shown(path: str) -> list:
    try:
        return json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as `dvc exp show --json` output ({e})")


def with_params(found: list[dict], only: dict) -> list[dict]:
    """The runs whose params have each KEY of `only` at its VALUE (compared as text)."""
    return [r for r in found if all(str(flat(r["params"]).get(k)) == v for k, v in only.items())]


def key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE, e.g. train.lr=0.001")
    return tuple(text.split("=", 1))


def report(shown: list, only: dict, curves_variant: str | None,
           by_seed_variant: str | None = None) -> str:
    groups = seed_groups(with_params(runs(shown), only))
    if not groups:
        raise UserError("no experiments that differ only in train.seed; run dvc exp run "
                        "--queue -S 'train.seed=1,2,3' and dvc queue start first")
    labels = distinguishing(groups)
    text = "\n".join((f"{labels[key]}\n" if labels[key] else "") + summary_table(group)
                     for key, group in groups.items())
    if by_seed_variant:
        ran = evaluating(groups, by_seed_variant)
        text += "\n" + seed_table(ran, distinguishing(ran), by_seed_variant)
    if not curves_variant:
        return text
    ran = evaluating(groups, curves_variant)
    names = [r["sources"][f"metrics/{curves_variant}.json"] for group in ran.values() for r in group]
    plots = dvc_json(["plots", "diff", *names, "--targets", *curve_targets(curves_variant)])
    return text + "\n" + matched_table(ran, distinguishing(ran),
                                       parse_curves(plots, curves_variant), curves_variant)


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shown", nargs="?", help="saved `dvc exp show --json` output")
    parser.add_argument("--only", metavar="KEY=VALUE", type=key_value, action="append", default=[],
                        help="keep the runs whose param KEY is VALUE, e.g. train.lr=0.001")
    parser.add_argument("--curves", metavar="VARIANT",
                        help="also compare the groups that ran VARIANT epoch by epoch")
    parser.add_argument("--by-seed", metavar="VARIANT",
                        help="also list the groups' scores for VARIANT seed by seed")
    parser.add_argument("--out", metavar="FILE",
                        help="also write the tables to FILE, under the command that made them")
    args = parser.parse_args(argv)
    shown = read_shown(args.shown) if args.shown else dvc_json(["exp", "show"])
    text = report(shown, dict(args.only), args.curves, args.by_seed)
    print(text)
    if args.out:
        write_measurement(args.out, "tools.seeds", sys.argv[1:] if argv is None else argv, text)


if __name__ == "__main__":
    sys.exit(main())
