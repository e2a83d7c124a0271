import os
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT, make_dataset


def test_bench_compares_the_loops_per_variant(in_tmp):
    make_dataset(in_tmp / "data/raw", per_class=3)
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["train"].update(weights="none", draws_per_epoch=0)
    params["variants"]["cnn"]["draws_per_epoch"] = 12  # each variant's own draws, unless --draws
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tools.bench", "--epochs", "2", "--compile",
                           "--variants", "cnn", "resnet50_fc"], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    cells = [line.strip("| ").split(" | ") for line in done.stdout.splitlines()
             if line.startswith("| ") and "---" not in line]
    rows = {row[0]: row for row in cells}  # variant, draws, plain, pipeline, 2 speed-ups, 2 MB
    assert rows["cnn"][1] == "12"
    assert rows["resnet50_fc"][1] == "12"  # the size of the train split: 4 classes x 3
    names = list(rows)[1:]  # after the header
    assert names == ["cnn", "cnn, torch.compile", "resnet50_fc", "resnet50_fc, torch.compile"]
    assert rows["cnn, torch.compile"][1:3] == rows["cnn"][1:3]  # against the same plain run
    for name in names:  # ratios and memory parse; their values are timings, not asserted
        assert all(re.fullmatch(r"\d+\.\d+x", c) for c in rows[name][4:6])
        assert all(re.fullmatch(r"\d+", c) for c in rows[name][6:])
