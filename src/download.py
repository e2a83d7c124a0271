"""Stage `download`: put the dataset at data/raw/Data: Kaggle's {train,valid,test}/<class>/, or
class folders alone for `prepare` to split (see `data.classes` and `data.split`).

data.source picks where it comes from:
  kaggle  Kaggle's own client (kagglehub): anonymous for this public dataset, or with the
          user's credentials (KAGGLE_API_TOKEN, KAGGLE_USERNAME + KAGGLE_KEY, ~/.kaggle/kaggle.json)
  local   data.archive: the zip or folder downloaded by hand from the dataset's page
  sample  data/sample: a small subset of the real dataset shipped with the project

The new copy is assembled beside data/raw and checked before it replaces it, so a failed
download leaves the previous data in place.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

from src.lib.config import load_config
from src.lib.errors import UserError, command
from src.lib.paths import RAW_DIR, SAMPLE_DIR
from src.lib.raw import find_data_root, scan_raw

OFFLINE_HINT = ("set data.source=local with data.archive=<the zip from the dataset's page>, "
                "or data.source=sample for the bundled subset")


def has_kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_API_TOKEN") or (
            os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def from_kaggle(dataset: str, target: Path) -> None:
    import kagglehub  # imported here: the other sources must work without touching Kaggle
    import requests

    try:
        kagglehub.dataset_download(dataset, output_dir=str(target), force_download=True)
    except requests.exceptions.ConnectionError:
        raise UserError(f"cannot reach Kaggle to download {dataset} (no network?); "
                        + OFFLINE_HINT) from None
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        who = "with your credentials" if has_kaggle_credentials() else \
            "anonymously; set KAGGLE_USERNAME and KAGGLE_KEY or put kaggle.json in ~/.kaggle"
        raise UserError(f"Kaggle refused the download of {dataset} {who} (HTTP {status}); "
                        + OFFLINE_HINT) from None
    except Exception as e:  # kagglehub wraps some failures in its own exception types
        raise UserError(f"downloading {dataset} from Kaggle failed ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); " + OFFLINE_HINT) from None


def safe_extract(archive: Path, target: Path, max_mb: int) -> None:
    """Extract a zip, refusing members that would land outside `target` (absolute paths, `..`),
    symbolic links, and more than `max_mb` unpacked (a zip bomb): archives come from the internet."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UserError(f"{archive}: not a zip file; give the zip from the dataset's page or "
                        "the folder it unpacks to") from None
    with zf:
        members = zf.infolist()
        if not members:
            raise UserError(f"{archive}: the zip is empty")
        unpacked = sum(m.file_size for m in members)
        if unpacked > max_mb * 2**20:
            raise UserError(f"{archive}: would unpack to {unpacked / 2**20:,.0f} MB, over "
                            f"data.max_extract_mb={max_mb}; raise it if the archive is trusted")
        root = target.resolve()
        for m in members:
            dest = (target / m.filename).resolve()
            if os.path.isabs(m.filename) or ".." in Path(m.filename).parts or \
                    not dest.is_relative_to(root):
                raise UserError(f"{archive}: member '{m.filename}' would be written outside "
                                "the target folder; refusing this archive")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UserError(f"{archive}: member '{m.filename}' is a symbolic link; "
                                "refusing this archive")
        zf.extractall(target)


def from_local(archive: str, target: Path, max_mb: int) -> None:
    path = Path(archive).expanduser()
    if not path.exists():
        raise UserError(f"data.archive: '{archive}' does not exist; give the path of the zip "
                        "downloaded from the dataset's page, or of the folder it unpacks to")
    if path.is_dir():
        shutil.copytree(path, target)
    else:
        target.mkdir(parents=True)
        safe_extract(path, target, max_mb)


def fetch(cfg) -> None:
    partial = RAW_DIR.with_name(RAW_DIR.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if cfg.data.source == "kaggle":
            from_kaggle(cfg.data.kaggle_dataset, partial)
        elif cfg.data.source == "local":
            from_local(cfg.data.archive, partial, cfg.data.max_extract_mb)
        else:
            shutil.copytree(SAMPLE_DIR, partial)
        data_root, _ = find_data_root(partial, cfg.data.classes)
        files, _ = scan_raw(partial, cfg.data.classes)  # a missing or unknown class stops here
        if not files:
            raise UserError(f"{cfg.data.source}: the dataset holds no images")
        # The splits (or the class folders) under Data/, whatever folder the source wrapped
        # them in.
        staged = partial.with_name(partial.name + ".data")
        shutil.rmtree(staged, ignore_errors=True)
        (staged).mkdir()
        shutil.move(data_root, staged / "Data")
        shutil.rmtree(RAW_DIR, ignore_errors=True)
        staged.rename(RAW_DIR)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"{cfg.data.source}: {len(files)} images in {RAW_DIR}/Data")


@command
def main() -> None:
    fetch(load_config())


if __name__ == "__main__":
    sys.exit(main())
