import os
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT, make_dataset


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tools.bench", *args], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done


def test_bench_compares_the_loops_with_the_variants_own_draws(in_tmp):
    make_dataset(in_tmp / "data/raw", per_class=3)
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["train"].update(weights="none", augment_views=1)  # 4000 draws per epoch by default
    params["variants"]["resnet50_fc"]["draws_per_epoch"] = 0  # its own: the size of the split
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    done = bench("--epochs", "2", "--compile", "--variants", "resnet50_fc")
    cells = [line.strip("| ").split(" | ") for line in done.stdout.splitlines()
             if line.startswith("| ") and "---" not in line]
    rows = {row[0]: row for row in cells}  # variant, draws, plain, pipeline, 2 speed-ups, 2 MB
    names = list(rows)[1:]  # after the header
    assert names == ["resnet50_fc", "resnet50_fc, torch.compile"]
    assert rows["resnet50_fc"][1] == "12"  # 4 classes x 3 train images
    assert rows["resnet50_fc, torch.compile"][1:3] == rows["resnet50_fc"][1:3]  # the same plain run
    for name in names:  # ratios and memory parse; their values are timings, not asserted
        assert all(re.fullmatch(r"\d+\.\d+x", c) for c in rows[name][4:6])
        assert all(re.fullmatch(r"\d+", c) for c in rows[name][6:])


def test_bench_out_writes_what_it_printed_under_the_command_that_made_it(in_tmp):
    make_dataset(in_tmp / "data/raw", per_class=1)
    done = bench("--predict", "--out", "measured")
    [written] = (in_tmp / "measured").glob("predict-cpu-*-torch*.md")
    command_line, blank, result = written.read_text().splitlines()
    assert command_line == "`python -m tools.bench --predict --out measured`" and blank == ""
    assert result in done.stdout
    assert re.search(r"loading it \d+\.\d+ s, classifying the image \d+\.\d+ s$", result)


def test_bench_startup_names_the_heavy_libraries_each_stage_loads():
    done = bench("--startup", "src.download", "src.train")
    rows = {row[0]: row[1:] for row in (line.strip("| ").split(" | ")
                                         for line in done.stdout.splitlines()
                                         if line.startswith("| src."))}
    assert list(rows) == ["src.download", "src.train"]
    assert rows["src.download"][2] == "none"
    assert rows["src.train"][2].split(", ") == ["torch", "torchvision", "torch._dynamo"]
    for seconds, ratio, _ in rows.values():  # timings parse; their values are not asserted
        assert re.fullmatch(r"\d+\.\d+", seconds) and re.fullmatch(r"\d+\.\d+x", ratio)
