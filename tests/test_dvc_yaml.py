"""dvc.yaml declares exactly what each stage's code imports, so that caching is exact."""
import ast
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT


def local_imports(module: str) -> set[str]:
    """src/*.py files that `module` imports, directly or through other src modules."""
    seen, todo = set(), [module]
    while todo:
        path = ROOT / (todo.pop().replace(".", "/") + ".py")
        if str(path) in seen:
            continue
        seen.add(str(path))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
                names = [node.module] if node.module != "src" else \
                    [f"src.{a.name}" for a in node.names]
                todo += [n for n in names if (ROOT / (n.replace(".", "/") + ".py")).exists()]
    return {str(Path(p).relative_to(ROOT)) for p in seen}


def stage_definitions():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        yield name, stage.get("do", stage)


def test_every_stage_depends_on_exactly_the_code_it_runs():
    for name, stage in stage_definitions():
        module = re.match(r"python -m (src\.\w+)", stage["cmd"]).group(1)
        declared = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("src/")}
        assert declared == local_imports(module), name


def test_stages_read_only_their_own_params():
    params = {name: stage["params"] for name, stage in stage_definitions()}
    assert params["train"] == ["train", "variants.${key}"]
    assert params["evaluate"] == ["train", "variants.${key}"]
    assert params["release"] == ["model"]
    assert params["prepare"] == ["prepare"]
