"""Rebuild data/sample, the small subset of the real dataset that the project ships (CC0).

    python tools/make_sample.py path/to/chest-ctscan-images.zip

Takes the smallest distinct files of each split and class, plus files that keep the real
dataset's quirks: a JPEG, a grayscale PNG, a duplicate across train and test, names with spaces.
"""
import hashlib
import shutil
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

PER_SPLIT = {"train": 8, "valid": 3, "test": 4}
QUIRKS = ["Data/train/normal/n6.jpg",  # JPEG
          "Data/train/large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa/l5.png",  # grayscale (L)
          "Data/train/normal/10 - Copy (3).png", "Data/test/normal/10 - Copy (3).png"]  # duplicate
TARGET = Path("data/sample")
MAX_BYTES = 5 * 2**20


def main(archive: str) -> None:
    zf = zipfile.ZipFile(archive)
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
    shutil.rmtree(TARGET, ignore_errors=True)
    for name in sorted(chosen):
        dest = TARGET / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(zf.read(name))
    total = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"{len(chosen)} files, {total / 2**20:.2f} MiB in {TARGET}")
    assert total <= MAX_BYTES, "the sample must stay under 5 MB"


if __name__ == "__main__":
    main(sys.argv[1])
