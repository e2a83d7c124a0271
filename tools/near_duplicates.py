"""How far apart in pHash bits a dataset's images lie, to choose
`prepare.near_duplicate_distance` by looking, not by guessing.

    python -m tools.near_duplicates data/raw [--max-distance 8] [--out docs/measurements]

For each distance up to --max-distance: the pairs of images that are not pixel-identical at
exactly that distance, how many of them cross splits or labels, and how many test images the
distance would newly tie to a train or valid image (one with no identical copy there). --out
also writes a sheet of example pairs per distance (near-duplicates-<distance>-bits.png), to see
whether they are one slice, neighbouring slices of one patient, or different patients.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

import imagehash

from src.lib.config import load_config
from src.lib.data import decode_image, pixel_digest
from src.lib.errors import command
from src.lib.groups import near_pairs, perceptual_hash
from src.lib.io import markdown_table
from src.lib.raw import scan_raw
from tools.measurement import shown_argument, write_measurement

SHEET_PAIRS = 6


def pair_sheet(files, pairs, path: Path) -> None:
    """Pairs side by side, a row each, with their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(pairs), 2, figsize=(5, 2.2 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, i in zip(row, pair):
            ax.imshow(decode_image(files[i].path, (-600, 1500)).convert("L"), cmap="gray")
            ax.set_title(files[i].name[-44:], fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="a dataset folder, as `download` leaves data/raw")
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the table and sheets to this folder")
    args = parser.parse_args(argv)
    cfg = load_config()
    files, _ = scan_raw(args.raw, cfg.data.classes)
    images = [decode_image(f.path, (cfg.prepare.dicom_window_center,
                                    cfg.prepare.dicom_window_width)) for f in files]
    hashes, pixels = [perceptual_hash(im) for im in images], [pixel_digest(im) for im in images]
    copied = {p for f, p in zip(files, pixels) if f.split != "test"}
    counts, examples, newly_tied = Counter(), defaultdict(list), defaultdict(set)
    for i, j, d in near_pairs(hashes, args.max_distance):
        if pixels[i] == pixels[j]:
            continue
        counts[d, "pairs"] += 1
        counts[d, "splits"] += files[i].split != files[j].split
        counts[d, "labels"] += files[i].label != files[j].label
        examples[d].append((i, j))
        for a, b in ((i, j), (j, i)):
            if files[a].split == "test" and files[b].split != "test" and pixels[a] not in copied:
                newly_tied[d].add(a)
    rows, tied = [], set()
    for d in range(args.max_distance + 1):
        tied |= newly_tied[d]
        rows.append([d, counts[d, "pairs"], counts[d, "splits"], counts[d, "labels"], len(tied)])
    table = (f"{len(files)} images under {shown_argument(str(args.raw))}; pHash of imagehash {imagehash.__version__} "
             "(64 bits); pairs that are not pixel-identical\n\n" + markdown_table(
                 ["distance", "pairs", "across splits", "across labels",
                  "test images tied to train/valid up to this distance"], rows))
    print(table)
    if args.out:
        write_measurement(args.out / "near-duplicates-phash.md",
                          "tools.near_duplicates", sys.argv[1:], table)
        for d, pairs in examples.items():
            shown = random.Random(d).sample(pairs, min(SHEET_PAIRS, len(pairs)))
            pair_sheet(files, shown, args.out / f"near-duplicates-{d}-bits.png")


if __name__ == "__main__":
    sys.exit(main())
