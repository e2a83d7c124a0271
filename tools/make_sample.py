"""Rebuild data/sample, the small subset of the real dataset that the project ships (CC0).

    python -m tools.make_sample path/to/chest-ctscan-images.zip

Takes the smallest distinct files of each split and class, plus files that keep the real
dataset's quirks: a JPEG, a grayscale PNG, a duplicate across train and test, names with spaces.
"""
import argparse
import hashlib
import shutil
import sys
import zipfile
from collections import defaultdict

from src.lib.errors import UserError, command
from src.lib.paths import SAMPLE_DIR

PER_SPLIT = {"train": 8, "valid": 3, "test": 4}
QUIRKS = ["Data/train/normal/n6.jpg",  # JPEG
          "Data/train/large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa/l5.png",  # grayscale (L)
          "Data/train/normal/10 - Copy (3).png", "Data/test/normal/10 - Copy (3).png"]  # duplicate
MAX_BYTES = 5 * 2**20


@command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", help="the Kaggle zip (Data/train, Data/valid, Data/test)")
    archive = parser.parse_args().archive
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{archive}: cannot read it as a zip ({e})") from None
    groups = defaultdict(list)
    for info in zf.infolist():
        if not info.is_dir():
            split, folder = info.filename.split("/")[1:3]
            groups[(split, folder)].append(info)
    chosen = set(QUIRKS)
    for (split, _), infos in sorted(groups.items()):
        seen = set()
        for info in sorted(infos, key=lambda i: (i.file_size, i.filename)):
            digest = hashlib.sha256(zf.read(info)).hexdigest()
            if digest not in seen and len(seen) < PER_SPLIT[split]:
                seen.add(digest)
                chosen.add(info.filename)
    shutil.rmtree(SAMPLE_DIR, ignore_errors=True)
    for name in sorted(chosen):
        dest = SAMPLE_DIR / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(zf.read(name))
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    print(f"{len(chosen)} files, {total / 2**20:.2f} MiB in {SAMPLE_DIR}")
    if total > MAX_BYTES:
        raise UserError(f"{SAMPLE_DIR}: {total / 2**20:.2f} MiB; the sample must stay under 5 MiB")


if __name__ == "__main__":
    sys.exit(main())
