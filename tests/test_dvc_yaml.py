"""dvc.yaml declares exactly what each stage's code imports and the params it reads, so that
caching is exact; and the code a stage imports leaves out the heavy libraries it does not use."""
import re
import subprocess
import sys

import pytest
import yaml

from src.lib.io import code_files
from tests.conftest import ROOT


def stage_definitions():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        yield name, stage.get("do", stage)


def test_every_stage_depends_on_exactly_the_code_it_runs():
    for name, stage in stage_definitions():
        module = re.match(r"python -m (src\.\w+)", stage["cmd"]).group(1)
        declared = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("src/")}
        assert declared == {str(p) for p in code_files(module, ROOT)}, name


def test_stages_read_only_their_own_params():
    params = {name: stage["params"] for name, stage in stage_definitions()}
    assert params["train"] == ["train", "variants.${key}"]
    assert params["evaluate"] == ["train", "variants.${key}"]
    assert params["release"] == ["model", "train", "variants.${model}"]  # the model card's
    assert params["prepare"] == ["prepare", "data.classes", "data.split", "data.groups"]
    assert "data.split" not in params["download"] and "data.groups" not in params["download"]


def test_every_stage_says_what_it_does():
    assert all(stage.get("desc") for _, stage in stage_definitions())


def test_only_metrics_and_plots_skip_the_cache_so_every_stage_is_run_cached():
    # DVC leaves a stage out of its run-cache when a plain output has `cache: false`.
    for name, stage in stage_definitions():
        for out in stage.get("outs", []):
            assert isinstance(out, str) or next(iter(out.values())).get("cache", True), name


# What a stage never imports: torch, torchvision and sklearn each take one to three seconds to
# import, paid by every run of the stage (15 processes in a full `dvc repro`).
UNUSED_LIBRARIES = {"src.download": {"torch", "numpy", "sklearn"},
                    "src.compare": {"torch", "sklearn"},
                    "src.release": {"sklearn"},  # it writes a checkpoint: torch
                    "src.train": {"sklearn", "matplotlib"}}


@pytest.mark.parametrize("module", sorted(UNUSED_LIBRARIES))
def test_stages_import_no_library_they_do_not_use(module):
    probe = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split())
    assert not UNUSED_LIBRARIES[module] & loaded
