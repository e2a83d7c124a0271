"""End to end: the real `dvc repro` on the shipped sample, in a temporary Git repository. The
module's fixture runs the pipeline once; each test then checks one behaviour and leaves the
workspace as it found it."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT
from tools import crossval

VARIANTS = ["cnn", "resnet50"]  # of the study's five: the pipeline follows `variants`
STAGES = {"download", "prepare", "floor", "compare", "release"} | \
    {f"{s}@{v}" for s in ("train", "evaluate") for v in VARIANTS}
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test",
       "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
       "GIT_COMMITTER_EMAIL": "test@example.com"}
pytestmark = pytest.mark.slow  # minutes: CI runs it, `pytest -m "not slow"` skips it


def run(repo, *cmd) -> subprocess.CompletedProcess:
    # A bound on every command, so that a hung one fails its test instead of stalling the run
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=ENV, timeout=900)


def sh(repo, *cmd) -> str:
    result = run(repo, *cmd)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def lock_hash(repo, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)


def set_params(repo, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@contextlib.contextmanager
def restored(repo):
    """Whatever a test changes, the committed baseline is back afterwards."""
    try:
        yield
    finally:
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q", "--force")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project with the shipped params made small enough for a test (two of the five
    variants, at 64 px), after one full `dvc repro`, committed."""
    repo = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data/sample", repo / "data/sample")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)

    def tiny(p):
        p["data"]["source"] = "sample"
        p["train"].update(weights="none", max_epochs=2, patience=2, augment_views=1, batch_size=8,
                          draws_per_epoch=0)
        p["variants"] = {v: {**p["variants"][v], "image_size": 64} for v in VARIANTS}
    set_params(repo, tiny)
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    (repo.parent / "first-repro.log").write_text(sh(repo, "dvc", "repro"))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    return repo


def test_dvc_repro_runs_every_stage_once_and_leaves_params_and_dvc_yaml_alone(repo):
    assert stages_run((repo.parent / "first-repro.log").read_text()) == STAGES
    assert len(sh(repo, "dvc", "stage", "list").strip().splitlines()) == len(STAGES)
    # The fixture commits after the repro, so its commit is what `dvc repro` changed.
    assert sh(repo, "git", "diff", "--name-only", "HEAD~1", "HEAD", "--", "dvc.yaml",
              "params.yaml") == ""


def test_a_second_repro_does_nothing(repo):
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")
    assert stages_run(sh(repo, "dvc", "repro")) == set()


def test_metrics_show_scores_intervals_and_what_each_run_ran_on(repo):
    files = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))[""]["data"]
    for v in VARIANTS:
        m = files[f"metrics/{v}.json"]["data"]
        test = m["test"]
        # test's four normal images are one slice saved with other marks, with a copy in train
        assert test["support"] == 16 and m["test_leak_free"]["support"] == 12
        assert test["f1_weighted_ci95_low"] <= test["f1_weighted"] <= test["f1_weighted_ci95_high"]
        assert m["train"]["epochs"] <= 2 and m["train"]["trainable_params"] > 0
        assert m["train"]["device"] == m["evaluate"]["device"] == "cpu"
        assert m["train"]["torch"].split("+")[0] in sh(repo, sys.executable, "-c",
                                                        "import torch; print(torch.__version__)")
    assert files["release/metrics.json"]["data"]["model"] == "resnet50"


def test_reports_plots_and_the_model_card_are_written(repo):
    table = (repo / "reports/comparison.md").read_text()
    assert table.startswith("# 2 variants on the test split (16 images, 12 of them leak-free)")
    assert all(f"| {v} |" in table for v in VARIANTS + ["floor"])
    for image in ("confusion", "reliability", "gradcam"):
        assert (repo / f"reports/cnn/images/{image}.png").stat().st_size > 0
    assert "Not for diagnosis" in (repo / "release/MODEL_CARD.md").read_text()
    assert (repo / "reports/data/images/samples.png").exists()
    shown = json.loads(sh(repo, "dvc", "plots", "show", "--json", "--split"))["data"]
    assert {f"dvclive/{v}/plots/metrics/val/loss.tsv" for v in VARIANTS} | \
        {f"predictions/{v}.json" for v in VARIANTS} <= set(shown), sorted(shown)


def test_predict_gives_the_probabilities_evaluate_scored(repo):
    # the softmax of a checkpoint as `train` wrote it; the released one (resnet50) calibrated
    for variant, how, key in (("cnn", ["--model", "models/cnn/model.pt", "--raw"],
                               "probabilities"),
                              ("resnet50", ["--model", "release/model.pt"], "calibrated")):
        scored = json.loads((repo / f"predictions/{variant}.json").read_text())
        files = [str(repo / "data/raw/Data" / row["file"]) for row in scored]
        printed = json.loads(sh(repo, sys.executable, "-m", "src.predict", *how, "--json",
                                *files))
        for row, out in zip(scored, printed):
            assert out["probabilities"] == pytest.approx(row[key], abs=1e-3)


def test_an_unknown_model_name_stops_with_the_valid_ones(repo):
    with restored(repo):
        set_params(repo, lambda p: p.update(model="vgg16"))
        failed = run(repo, "dvc", "repro")
        assert failed.returncode != 0
        assert "error: model: 'vgg16' is not allowed; use one of cnn, resnet50" in failed.stderr


def test_a_variant_added_in_params_alone_trains_evaluates_and_joins_the_comparison(repo):
    # A registered architecture (src/lib/architectures.py) the study did not use: no code, no
    # dvc.yaml change; `-S` adds the entry as `dvc exp run` users would.
    with restored(repo):
        out = sh(repo, "dvc", "exp", "run", "-S", "+variants.effnet_fc={arch: efficientnet_v2_s, "
                 "trainable: classifier, image_size: 64}")
        assert stages_run(out) == {"train@effnet_fc", "evaluate@effnet_fc", "compare"}
        assert "| effnet_fc | classifier |" in (repo / "reports/comparison.md").read_text()
        m = json.loads((repo / "metrics/effnet_fc.json").read_text())
        assert m["train"]["trainable_params"] == 1280 * 4 + 4  # the new classifier alone
        assert m["test"]["support"] == 16


def test_one_variants_setting_reruns_that_variant_and_the_comparison_only(repo):
    with restored(repo):
        out = sh(repo, "dvc", "exp", "run", "-S", "variants.cnn.lr=0.01")
        assert stages_run(out) == {"train@cnn", "evaluate@cnn", "compare"}


def test_switching_the_released_model_retrains_nothing(repo):
    # The table's McNemar column pairs models with the released one, so it is redrawn.
    with restored(repo):
        out = sh(repo, "dvc", "exp", "run", "-S", "model=cnn")
        assert stages_run(out) == {"compare", "release"}
        assert json.loads((repo / "release/metrics.json").read_text())["model"] == "cnn"


def start_queue(repo) -> None:
    # `queue start` returns at once, but the workers it forks hold its stdout and stderr until
    # they exit: captured, it would wait on them without bound. So: a file.
    with open(repo.parent / "queue-start.log", "a") as log:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=ENV, check=True,
                       stdout=log, stderr=subprocess.STDOUT, timeout=60)


def worker_logs(repo) -> str:
    return "\n".join(log.read_text()[-3000:]
                     for log in (repo / ".dvc/tmp/exps/celery").glob("*.out"))


def run_queue(repo, experiments: int) -> None:
    """Start the queue and wait until `experiments` more experiments have succeeded."""
    succeeded = sh(repo, "dvc", "queue", "status").count("Success")
    start_queue(repo)
    deadline, started = time.time() + 600, time.time()
    while re.search(r"\b(Queued|Running)\b", status := sh(repo, "dvc", "queue", "status")):
        if time.time() > deadline:
            sh(repo, "dvc", "queue", "stop", "--kill")
            pytest.fail(f"the queued experiments did not finish in 10 minutes:\n{status}\n"
                        + worker_logs(repo))
        if "Running" not in status and "0 active, 0 idle" in status and \
                time.time() - started > 30:
            # A worker can stop with work queued: it may read one of the messages its own
            # idle check sends before the message is written (kombu's file transport,
            # celery/kombu#1551). As docs/parallel.md tells users: start the queue again.
            start_queue(repo)
            started = time.time()
        time.sleep(2)
    assert status.count("Success") == succeeded + experiments, status
    sh(repo, "dvc", "queue", "stop")


def test_queued_evaluations_are_restored_from_the_run_cache(repo):
    # The parallel recipe, for the CNN and the released ResNet-50: a queued experiment per
    # variant's evaluation, two at a time; a plain `dvc repro` in the workspace then takes their
    # training and evaluation from the run-cache. (A learning rate no other test sets, so that
    # nothing is in the run-cache before.)
    queued, lr = ["cnn", "resnet50"], 0.002

    def new_lr(params):
        for v in queued:
            params["variants"][v]["lr"] = lr
    with restored(repo):
        before = {v: lock_hash(repo, f"train@{v}", f"models/{v}") for v in queued}
        for v in queued:
            sh(repo, "dvc", "exp", "run", "--queue", "-n", f"eval-{v}", "-S",
               f"variants.{v}.lr={lr}", f"evaluate@{v}")
        run_queue(repo, len(queued))
        set_params(repo, new_lr)
        out = sh(repo, "dvc", "repro")
        assert all(f"Stage '{s}@{v}' is cached - skipping run" in out
                   for s in ("train", "evaluate") for v in queued), out
        assert stages_run(out) == {"compare", "release"}
        assert all(lock_hash(repo, f"train@{v}", f"models/{v}") != before[v] for v in queued)


def test_cross_validation_folds_train_as_experiments_without_reading_test(repo):
    # docs/protocol.md: the recipe is compared over folds of train and valid, by training only
    with restored(repo):
        sh(repo, "dvc", "exp", "run", "--queue", "-S", "prepare.fold=0,1", "train@cnn")
        run_queue(repo, 2)
        shown = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
        baseline = shown[1]
        folds = [e["revs"][0]["data"] for e in baseline["experiments"]
                 if e["revs"][0]["data"]["params"]["params.yaml"]["data"]["prepare"]["fold"]
                 is not None]
        assert len(folds) == 2 and all(  # evaluate never ran
            f["metrics"]["metrics/cnn.json"] == baseline["data"]["metrics"]["metrics/cnn.json"]
            for f in folds)
        table = crossval.report(shown, "cnn", only={})
        assert re.search(r"\| runs \| 0, 1 \| 42 \| cpu \w+ \| \d\.\d{3} ± \d\.\d{3} \|", table), table


def test_metrics_live_in_git_so_commits_compare_without_the_cache(repo):
    baseline = sh(repo, "git", "rev-parse", "HEAD").strip()
    with restored(repo):
        set_params(repo, lambda p: p["variants"]["cnn"].update(max_epochs=1))
        assert stages_run(sh(repo, "dvc", "repro")) == {"train@cnn", "evaluate@cnn", "compare"}
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "cnn: one epoch")
        diff = json.loads(sh(repo, "dvc", "metrics", "diff", baseline, "HEAD", "--json"))
        assert diff["metrics/cnn.json"]["train.epochs"] == {"old": 2, "new": 1, "diff": -1}
        assert "metrics/resnet50.json" not in diff
        sh(repo, "git", "reset", "-q", "--hard", baseline)


def test_a_remote_shares_the_pipeline_and_the_released_model(repo):
    remote, clone = repo.parent / "remote", repo.parent / "clone"
    sh(repo, "dvc", "remote", "add", "-d", "store", str(remote))
    sh(repo, "git", "commit", "-qam", "remote")
    sh(repo, "dvc", "push", "-q")
    sh(repo.parent, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "-q")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")
    # DVC's model registry: the artifact from dvc.yaml, registered as a version with a Git tag
    # (GTO's format), fetched from the remote without a workspace
    sh(repo, "git", "tag", "-a", "chest-ct-classifier@v1.0.0", "-m", "first release")
    fetched = repo.parent / "fetched.pt"
    sh(repo.parent, "dvc", "artifacts", "get", str(repo), "chest-ct-classifier", "-o",
       str(fetched))
    assert fetched.read_bytes() == (repo / "release/model.pt").read_bytes()
