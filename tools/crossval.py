"""Cross-validation: recipes compared on validation scores only, over folds and seeds.

Each run trains on four folds of the pooled train and valid images and validates on the fifth
(`prepare.fold`, docs/protocol.md); test is never read, since only `train` runs:

    dvc exp run --queue -S 'prepare.fold=0,1,2,3,4' train@cnn
    dvc exp run --queue -S 'prepare.fold=0,1,2,3,4' -S variants.cnn.framing=letterbox train@cnn
    dvc queue start             # then wait until `dvc queue status` shows them done
    python -m tools.crossval cnn  # reads `dvc exp show --json`; or: ... cnn FILE.json

Runs whose params differ in more than the fold and `train.seed` are recipes, one row each, with
the mean and standard deviation over their runs of the chosen epoch's validation scores (from
dvclive/<variant>/metrics.json). With two recipes, a table pairs their runs of the same fold and
seed, and the difference in validation macro F1 gets the corrected resampled t-test of Nadeau and
Bengio (2003): folds share most of their training images, so their differences are correlated,
and a plain t-test over them would overstate the evidence.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

from scipy import stats

from src.lib.errors import UserError, command
from src.lib.io import markdown_table
from tools.measurement import write_measurement
from tools.seeds import (
    distinguishing, dvc_json, key_value, lookup, mean_std, ran_on, read_shown, runs, seed_groups,
    with_params
)

REPLICATES = ("prepare.fold", "train.seed")
# (column, path in dvclive/<variant>/metrics.json)
SCORES = (("val macro F1", ("best", "val_f1_macro")), ("val weighted F1", ("best", "val_f1_weighted")),
          ("val accuracy", ("best", "val_acc")), ("val loss", ("best", "val_loss")),
          ("best epoch", ("best_epoch",)))


def metrics_file(variant: str) -> str:
    return f"dvclive/{variant}/metrics.json"


def replicate(run: dict) -> tuple:
    return run["params"]["prepare"]["fold"], run["params"]["train"]["seed"]


def recipes(shown: list, variant: str, only: dict) -> dict[str, list[dict]]:
    """Per recipe, its cross-validation runs that trained `variant`, by fold and seed."""
    found = [r for r in with_params(runs(shown), only) if metrics_file(variant) in r["metrics"]
             and r["params"]["prepare"].get("fold") is not None]
    groups = {key: sorted(group, key=replicate)
              for key, group in seed_groups(found, over=REPLICATES).items()}
    if not groups:
        raise UserError(f"no cross-validation runs of {variant}; run dvc exp run --queue -S "
                        f"'prepare.fold=0,1,2,3,4' train@{variant} and dvc queue start first")
    return groups


def score(run: dict, variant: str, path: tuple) -> float:
    return lookup(run["metrics"][metrics_file(variant)], path)


def summary_table(groups: dict, labels: dict, variant: str) -> str:
    rows = []
    for key, group in groups.items():
        folds = sorted({replicate(r)[0] for r in group})
        seeds = sorted({replicate(r)[1] for r in group})
        machines = sorted({ran_on(r["metrics"][metrics_file(variant)]) for r in group})
        rows.append([labels[key] or "runs", ", ".join(map(str, folds)), ", ".join(map(str, seeds)),
                     ", ".join(machines),
                     *(mean_std([score(r, variant, path) for r in group]) for _, path in SCORES)])
    return (f"{variant}: the chosen epoch's validation scores, mean ± standard deviation over "
            "each recipe's runs (fold and seed)\n\n"
            + markdown_table(["recipe", "folds", "seeds", "ran on", *(c for c, _ in SCORES)], rows))


def corrected_t_test(differences: list[float], held_out_ratio: float) -> float:
    """Two-sided p of the corrected resampled t-test (Nadeau and Bengio 2003): the variance of
    the mean difference is the sample variance times 1/n + n_valid/n_train, not 1/n."""
    n = len(differences)
    variance = statistics.variance(differences)
    if variance == 0:
        return 0.0 if statistics.mean(differences) else 1.0
    t = statistics.mean(differences) / math.sqrt((1 / n + held_out_ratio) * variance)
    return float(2 * stats.t.sf(abs(t), df=n - 1))


def paired_table(groups: dict, labels: dict, variant: str, folds: int) -> str:
    """The two recipes' runs of the same fold and seed side by side, and their difference."""
    first, second = (dict((replicate(r), r) for r in group) for group in groups.values())
    names = [labels[key] for key in groups]
    both = sorted(set(first) & set(second))
    if len(both) < 2:
        return f"{names[1]} against {names[0]}: fewer than two runs of the same fold and seed"
    paired = [c for c in SCORES if c[0] in ("val macro F1", "val loss")]
    rows, differences = [], []
    for fold_seed in both:
        scores = [(score(first[fold_seed], variant, path), score(second[fold_seed], variant, path))
                  for _, path in paired]
        rows.append([*fold_seed, *(cell for a, b in scores
                                   for cell in (f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"))])
        differences.append(scores[0][1] - scores[0][0])  # val macro F1
    header = ["fold", "seed"] + [f"{c}: {n}" for c, _ in paired for n in (*names, "difference")]
    higher = sum(d > 0 for d in differences)
    p = corrected_t_test(differences, 1 / (folds - 1))
    return (f"{names[1]} minus {names[0]}, run by run\n\n" + markdown_table(header, rows)
            + f"\nValidation macro F1, {names[1]} minus {names[0]}: "
            f"{mean_std([round(d, 6) for d in differences])} over {len(differences)} runs, "
            f"higher in {higher} of them; corrected resampled t-test p = {p:.2g}\n")


def report(shown: list, variant: str, only: dict) -> str:
    groups = recipes(shown, variant, only)
    labels = distinguishing(groups)
    text = summary_table(groups, labels, variant)
    if len(groups) == 2:
        folds = next(iter(groups.values()))[0]["params"]["prepare"]["folds"]
        text += "\n" + paired_table(groups, labels, variant, folds)
    return text


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="the variant whose training runs are compared")
    parser.add_argument("shown", nargs="?", help="saved `dvc exp show --json` output")
    parser.add_argument("--only", metavar="KEY=VALUE", type=key_value, action="append", default=[],
                        help="keep the runs whose param KEY is VALUE, e.g. train.lr=0.001")
    parser.add_argument("--out", metavar="FILE",
                        help="also write the tables to FILE, under the command that made them")
    args = parser.parse_args(argv)
    shown = read_shown(args.shown) if args.shown else dvc_json(["exp", "show"])
    text = report(shown, args.variant, dict(args.only))
    print(text)
    if args.out:
        write_measurement(args.out, "tools.crossval", sys.argv[1:] if argv is None else argv, text)


if __name__ == "__main__":
    sys.exit(main())
