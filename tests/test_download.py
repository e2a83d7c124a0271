import shutil
import subprocess
import sys
import zipfile

import pytest
import requests
import yaml

from src import download
from src.lib.config import parse_config
from src.lib.errors import UserError
from src.lib.paths import RAW_DIR
from tests.conftest import ROOT, make_dataset, shipped_params


def config(**data):
    raw = shipped_params()
    raw["data"].update(data)
    return parse_config(raw)


def zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder))
    return archive


def test_sample_source_copies_the_shipped_subset(in_tmp):
    shutil.copytree(ROOT / "data/sample", in_tmp / "data/sample")
    download.fetch(config(source="sample"))
    assert sorted(p.name for p in (in_tmp / RAW_DIR / "Data").iterdir()) == ["test", "train", "valid"]
    assert sum(1 for _ in (in_tmp / "data/sample").rglob("*.*")) == \
        sum(1 for _ in (in_tmp / RAW_DIR).rglob("*.*"))


def test_local_zip_and_folder_give_kaggles_layout(in_tmp, tmp_path_factory):
    src = make_dataset(tmp_path_factory.mktemp("kaggle"))
    archive = zip_folder(src, tmp_path_factory.mktemp("zip") / "archive.zip")
    download.fetch(config(source="local", archive=str(archive)))
    assert (in_tmp / RAW_DIR / "Data/test/normal/img 0.png").is_file()
    download.fetch(config(source="local", archive=str(src / "Data")))  # the unpacked folder
    assert (in_tmp / RAW_DIR / "Data/test/normal/img 0.png").is_file()


def test_kaggle_without_network_names_the_offline_sources(in_tmp, monkeypatch, capsys):
    import kagglehub
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key")

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(UserError) as err:
        download.fetch(config(source="kaggle"))
    assert "cannot reach Kaggle" in str(err.value)
    assert "data.source=local" in str(err.value) and "data.source=sample" in str(err.value)
    assert "s3cr3t-key" not in str(err.value) + "".join(capsys.readouterr())


def test_kaggle_refusal_says_how_to_authenticate(in_tmp, monkeypatch):
    import kagglehub
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(in_tmp / "no-kaggle-config"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    response = requests.Response()
    response.status_code = 403

    def refused(*args, **kwargs):
        raise requests.exceptions.HTTPError("403 Forbidden", response=response)
    monkeypatch.setattr(kagglehub, "dataset_download", refused)
    with pytest.raises(UserError, match="anonymously; set KAGGLE_USERNAME and KAGGLE_KEY .*"
                                         r"\(HTTP 403\)"):
        download.fetch(config(source="kaggle"))


def test_stage_errors_are_one_line_without_traceback(in_tmp):
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["data"].update(source="local", archive="nowhere/archive.zip")
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "src.download"], cwd=in_tmp,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                                 "PATH": ""})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: data.archive: 'nowhere/archive.zip' does not exist; give the path of the zip "
        "downloaded from the dataset's page, or of the folder it unpacks to"]
