"""End to end: the real `dvc repro` on the shipped sample, in a temporary Git repository."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from tests.conftest import ROOT

VARIANTS = ["cnn", "resnet50_fc", "resnet50", "inception_v3_fc", "inception_v3"]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test",
       "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
       "GIT_COMMITTER_EMAIL": "test@example.com"}


def sh(repo, *cmd) -> str:
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def trained_models(repo) -> dict:
    """{variant: the hash of models/<variant> in dvc.lock}."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {v: next(o["md5"] for o in lock[f"train@{v}"]["outs"] if o["path"] == f"models/{v}")
            for v in VARIANTS}


def set_params(repo, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data/sample", repo / "data/sample")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)

    def tiny(p):  # the shipped params, made small enough for a test
        p["data"]["source"] = "sample"
        p["train"].update(weights="none", max_epochs=2, patience=2, augment_views=2, batch_size=8,
                          draws_per_epoch=0)
        for v in p["variants"].values():
            if v["arch"] != "inception_v3":
                v["image_size"] = 64  # Inception's auxiliary branch needs 299
    set_params(repo, tiny)
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def test_dvc_repro_end_to_end(repo):
    # A full run: every stage once, and nothing left modified in dvc.yaml or params.yaml.
    out = sh(repo, "dvc", "repro")
    expected = {"download", "prepare", "floor", "compare", "release"} | \
        {f"{s}@{v}" for s in ("train", "evaluate") for v in VARIANTS}
    assert stages_run(out) == expected
    assert sh(repo, "git", "status", "--porcelain", "dvc.yaml", "params.yaml") == ""
    assert len(sh(repo, "dvc", "stage", "list").strip().splitlines()) == len(expected)

    metrics = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    files = metrics[""]["data"]  # "" is the workspace
    for v in VARIANTS:
        m = files[f"metrics/{v}.json"]["data"]
        assert 0 <= m["test"]["f1_weighted"] <= 1 and m["test"]["support"] == 16
        assert m["test_leak_free"]["support"] == 15  # the shipped duplicate of a train image
        assert m["train"]["epochs"] <= 2 and m["train"]["trainable_params"] > 0
    assert files["release/metrics.json"]["data"]["model"] == "resnet50"
    table = (repo / "reports/comparison.md").read_text()
    assert all(f"| {v} |" in table for v in VARIANTS + ["floor"])
    for image in ("confusion", "reliability", "gradcam"):
        assert (repo / f"reports/cnn/images/{image}.png").stat().st_size > 0
    assert "Not for diagnosis" in (repo / "release/MODEL_CARD.md").read_text()
    assert (repo / "reports/data/report.json").exists()
    assert (repo / "release/model.pt").exists()

    # A second run does nothing.
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")
    assert stages_run(sh(repo, "dvc", "repro")) == set()
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    baseline = sh(repo, "git", "rev-parse", "HEAD").strip()

    # An unknown name in `model` stops the run with the five valid ones.
    set_params(repo, lambda p: p.update(model="vgg16"))
    failed = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=ENV)
    assert failed.returncode != 0
    assert "error: model: 'vgg16' is not allowed; use one of cnn, resnet50_fc, resnet50, " \
        "inception_v3_fc, inception_v3" in failed.stderr
    sh(repo, "git", "checkout", "--", ".")

    # One variant's setting reruns that variant, the comparison, and nothing else.
    out = sh(repo, "dvc", "exp", "run", "-S", "variants.cnn.lr=0.01")
    assert stages_run(out) == {"train@cnn", "evaluate@cnn", "compare"}
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")

    # Switching the released model retrains nothing (the table's McNemar column pairs models
    # with the released one, so it is redrawn).
    out = sh(repo, "dvc", "exp", "run", "-S", "model=cnn")
    assert stages_run(out) == {"compare", "release"}
    assert json.loads((repo / "release/metrics.json").read_text())["model"] == "cnn"
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")

    # The five variants trained as queued experiments, two at a time; then `dvc repro` in the
    # workspace takes the five trained models from the run-cache and only evaluates.
    before = trained_models(repo)
    for v in VARIANTS:
        sh(repo, "dvc", "exp", "run", "--queue", "-n", f"train-{v}", "-S", "train.seed=7",
           f"train@{v}")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline and re.search(r"\b(Queued|Running)\b",
                                                 sh(repo, "dvc", "queue", "status")):
        time.sleep(2)
    status = sh(repo, "dvc", "queue", "status")
    assert status.count("Success") == 5, status
    sh(repo, "dvc", "queue", "stop")
    out = sh(repo, "dvc", "exp", "run", "-S", "train.seed=7")
    assert all(f"Stage 'train@{v}' is cached - skipping run" in out for v in VARIANTS), out
    assert stages_run(out) == {"floor", "compare", "release"} | {f"evaluate@{v}" for v in VARIANTS}
    after = trained_models(repo)
    assert all(after[v] != before[v] for v in VARIANTS)  # seed 7's weights, not seed 42's
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")

    # Metrics live in Git, so two commits compare without the DVC cache.
    set_params(repo, lambda p: p["variants"]["cnn"].update(max_epochs=1))
    assert stages_run(sh(repo, "dvc", "repro")) == {"train@cnn", "evaluate@cnn", "compare"}
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "cnn: one epoch")
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", baseline, "HEAD", "--json"))
    assert diff["metrics/cnn.json"]["train.epochs"] == {"old": 2, "new": 1, "diff": -1}
    assert "metrics/resnet50.json" not in diff

    # A DVC remote (a local folder here) shares data, models and results with another machine.
    sh(repo, "dvc", "remote", "add", "-d", "store", str(repo.parent / "remote"))
    sh(repo, "git", "commit", "-qam", "remote")
    sh(repo, "dvc", "push", "-q")
    clone = repo.parent / "clone"
    sh(repo.parent, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "-q")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")
    assert (clone / "release/model.pt").read_bytes() == (repo / "release/model.pt").read_bytes()
