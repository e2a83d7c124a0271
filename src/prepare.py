"""Stage `prepare`: data/raw (Kaggle's layout) -> data/prepared/{train,valid,test}.pt.

Decodes every image once, removes leakage into test, drops duplicate groups whose labels
conflict, computes the class balancing and letterboxes to `prepare.image_size`. Writes the data
report with its figures to reports/data/.
"""
from __future__ import annotations

import shutil
import sys
from collections import Counter, defaultdict

import numpy as np
import torch
from tqdm import tqdm

from src.lib import plots
from src.lib.config import CLASSES, SPLITS, load_config
from src.lib.data import balance_weights, decode_rgb, letterbox, pixel_digest, scan_raw
from src.lib.errors import command
from src.lib.io import file_digest, markdown_table, torch_save, write_json, write_text
from src.lib.paths import DATA_REPORT_DIR, PREPARED_DIR, RAW_DIR
from src.lib.transforms import augment


def decode_all(files, size: int):
    """Letterboxed arrays and digests of the decodable files; the others with their reason."""
    kept, skipped = [], []
    for f in tqdm(files, desc="decode", unit="img"):
        try:
            im = decode_rgb(f.path)
        except Exception as e:  # any decoder failure skips the file; the report says why
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append({"file": f.name, "reason": reason})
            continue
        kept.append({"file": f, "array": letterbox(im, size), "bytes": file_digest(f.path),
                     "pixels": pixel_digest(im)})
    return kept, skipped


def find_duplicates(records: list[dict]) -> dict:
    """Group by decoded pixels, then decide per group what train and valid must lose.

    - a group with a test member: its train and valid members leak into test;
    - a group spanning train and valid: its valid members would reward memorizing train;
    - a group whose train/valid members carry two labels: all of them are dropped.
    The test split is never changed; its leak-free part is each group's first test image where
    the group had no train or valid member."""
    groups = defaultdict(list)
    for i, r in enumerate(records):
        groups[r["pixels"]].append(i)
    removed, leak_free = {}, set()
    stats = Counter()
    for members in groups.values():
        splits = {records[i]["file"].split for i in members}
        byte_digests = {records[i]["bytes"] for i in members}
        if len(members) > 1:
            stats["duplicate_groups"] += 1
            stats["duplicate_files"] += len(members)
            stats["byte_identical_groups"] += len(byte_digests) == 1
            stats["cross_split_groups"] += len(splits) > 1
        test = [i for i in members if records[i]["file"].split == "test"]
        if test and splits == {"test"}:
            leak_free.add(test[0])
        for i in members:
            split = records[i]["file"].split
            if split != "test" and test:
                removed[i] = "duplicate of a test image"
            elif split == "valid" and "train" in splits:
                removed[i] = "duplicate of a train image"
        labels = {records[i]["file"].label for i in members
                  if records[i]["file"].split != "test" and i not in removed}
        if len(labels) > 1:
            stats["conflicting_label_groups"] += 1
            for i in members:
                if records[i]["file"].split != "test":
                    removed.setdefault(i, "duplicate group with conflicting labels")
    return {"removed": removed, "leak_free": leak_free, "stats": dict(stats)}


def count_by(files) -> dict:
    """Images per split and class."""
    out = {s: {c: 0 for c in CLASSES} for s in SPLITS}
    for f in files:
        out[f.split][f.label] += 1
    return out


def build_splits(kept, dup, balance: str) -> dict:
    splits = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(kept)
               if r["file"].split == split and i not in dup["removed"]]
        arrays = np.stack([kept[i]["array"] for i in idx]) if idx else \
            np.zeros((0, 1, 1, 3), dtype=np.uint8)
        data = {"images": torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(),
                "labels": torch.tensor([CLASSES.index(kept[i]["file"].label) for i in idx],
                                       dtype=torch.int64),
                "files": [kept[i]["file"].name for i in idx],
                "classes": list(CLASSES)}
        if split == "train":
            data["sample_weights"], data["class_weights"] = balance_weights(data["labels"], balance)
        if split == "test":
            data["leak_free"] = torch.tensor([i in dup["leak_free"] for i in idx])
        splits[split] = data
    return splits


def write_report(*, raw_counts, kept, dup, skipped, splits, image_size, balance) -> dict:
    after = {s: {c: int((splits[s]["labels"] == i).sum()) for i, c in enumerate(CLASSES)}
             for s in SPLITS}
    report = {
        "image_size": image_size,
        "balance": balance,
        "counts_found": raw_counts,
        "counts_prepared": after,
        "test_leak_free": {
            c: int((splits["test"]["labels"][splits["test"]["leak_free"]] == i).sum())
            for i, c in enumerate(CLASSES)},
        "duplicates": dup["stats"],
        "removed": [{"file": kept[i]["file"].name, "reason": why}
                    for i, why in sorted(dup["removed"].items())],
        "skipped": skipped,
    }
    write_json(DATA_REPORT_DIR / "report.json", report)
    counts = markdown_table(["split", "class", "found", "prepared"], [
        [s, c, raw_counts[s][c], after[s][c]] for s in SPLITS for c in CLASSES])
    lines = ["# Data report", "", f"Letterboxed to {image_size}x{image_size}; balancing: {balance}.",
             "", counts.rstrip()]
    lines += ["", f"Leak-free test images: {sum(report['test_leak_free'].values())} "
              f"{report['test_leak_free']}", "", "Duplicates: " + ", ".join(
                  f"{k} {v}" for k, v in dup["stats"].items()), "",
              f"Removed from train/valid: {len(report['removed'])}",
              *[f"- {r['file']}: {r['reason']}" for r in report["removed"]], "",
              f"Skipped files: {len(skipped)}",
              *[f"- {s['file']}: {s['reason']}" for s in skipped]]
    write_text(DATA_REPORT_DIR / "report.md", "\n".join(lines) + "\n")
    return report


def write_figures(raw_counts, report, splits) -> None:
    plots.class_distribution({"found": raw_counts, "prepared": report["counts_prepared"]},
                             DATA_REPORT_DIR / "images/class_distribution.png")
    plots.sample_grid(splits["train"]["images"], splits["train"]["labels"],
                      DATA_REPORT_DIR / "images/samples.png")
    plots.intensity_histograms(splits, DATA_REPORT_DIR / "images/intensity_histograms.png")
    if len(splits["train"]["images"]):
        image = splits["train"]["images"][:1].float() / 255
        generator = torch.Generator().manual_seed(0)
        views = torch.cat([image] + [augment(image, generator) for _ in range(5)])
        plots.image_row((views * 255).to(torch.uint8), ["original"] + ["augmented"] * 5,
                        DATA_REPORT_DIR / "images/augmentation_examples.png")


@command
def main() -> None:
    cfg = load_config()
    files, skipped = scan_raw(RAW_DIR)
    kept, undecodable = decode_all(files, cfg.prepare.image_size)
    skipped += undecodable
    dup = find_duplicates(kept)
    splits = build_splits(kept, dup, cfg.prepare.balance)
    raw_counts = count_by(files)
    report = write_report(raw_counts=raw_counts, kept=kept, dup=dup, skipped=skipped,
                          splits=splits, image_size=cfg.prepare.image_size,
                          balance=cfg.prepare.balance)
    write_figures(raw_counts, report, splits)
    shutil.rmtree(PREPARED_DIR, ignore_errors=True)
    for split, data in splits.items():
        torch_save(PREPARED_DIR / f"{split}.pt", data)
    sizes = ", ".join(f"{s} {len(d['labels'])}" for s, d in splits.items())
    print(f"prepared {sizes} images "
          f"at {cfg.prepare.image_size}px; skipped {len(skipped)} files, removed "
          f"{len(dup['removed'])} duplicates; report in {DATA_REPORT_DIR}/report.md")


if __name__ == "__main__":
    sys.exit(main())
