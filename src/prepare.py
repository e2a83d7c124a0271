"""Stage `prepare`: data/raw -> data/prepared: images.npy and {train,valid,test}.json.

    python -m src.prepare [--workers N]

Decodes every image once (with all cores from data.PARALLEL_FROM files) straight into the
memory-mapped images file (one letterboxed row per file, at `prepare.image_size`); splits data
that came without splits; removes leakage into test and duplicate groups whose labels conflict;
computes the class balancing. Each split's JSON lists its rows of images.npy with labels and file
names. Writes the data report with its figures to reports/data/. The output does not depend on
--workers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import torch
from tqdm import tqdm

from src.lib import plots
from src.lib.config import SPLITS, load_config
from src.lib.data import (
    IMAGES_FILE, PARALLEL_FROM, balance_weights, decode_image, letterbox, load_split, pixel_digest,
    process_pool
)
from src.lib.errors import command
from src.lib.io import MappedArray, file_digest, markdown_table, write_json, write_text
from src.lib.paths import DATA_REPORT_DIR, PREPARED_DIR, RAW_DIR
from src.lib.raw import scan_raw
from src.lib.transforms import augment

_worker = {}  # each decoding process's open images file and settings


def _open_images(images_path, size: int, dicom_window) -> None:
    _worker.update(store=MappedArray(images_path, writable=True), size=size, window=dicom_window)


def _start_worker(*settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    _open_images(*settings)


def _decode_one(job) -> tuple[int, dict]:
    """Decode file `row` into its row of the images file: its digests, or why it was skipped."""
    row, path = job
    try:
        im = decode_image(path, _worker["window"])
    except Exception as e:  # any decoder failure skips the file; the report says why
        return row, {"reason": str(e).splitlines()[0] if str(e) else type(e).__name__}
    _worker["store"].write(row, letterbox(im, _worker["size"]).transpose(2, 0, 1))
    return row, {"bytes": file_digest(path), "pixels": pixel_digest(im)}


def decode_all(files, images_path, *, size: int, dicom_window, workers: int):
    """Decode into `images_path`, `workers` processes at once: records of the decodable files
    (file, row, digests) in file order, and the others with their reason."""
    MappedArray.create(images_path, (len(files), 3, size, size), np.uint8)
    jobs = [(row, f.path) for row, f in enumerate(files)]
    settings = (images_path, size, dicom_window)
    if workers == 1:
        _open_images(*settings)
        results = map(_decode_one, jobs)
        pool = None
    else:
        pool = process_pool(workers, _start_worker, settings)
        results = pool.imap(_decode_one, jobs, chunksize=16)
    kept, skipped = [], []
    try:
        for row, outcome in tqdm(results, total=len(jobs), desc="decode", unit="img"):
            if "reason" in outcome:
                skipped.append({"file": files[row].name, "reason": outcome["reason"]})
            else:
                kept.append({"file": files[row], "row": row, **outcome})
    finally:
        if pool is not None:
            pool.terminate()  # all results are in, or we are stopping early
            pool.join()
    return kept, skipped


def assign_splits(records: list[dict], split) -> None:
    """For data without splits: per label, groups of identical images in a seeded order fill
    train, then valid, then test, each group whole, so that no image has a copy in another
    split. A group goes where its middle falls."""
    groups = defaultdict(list)
    for r in records:
        groups[r["pixels"]].append(r)
    by_label = defaultdict(list)
    for members in groups.values():
        by_label[members[0]["file"].label].append(members)
    rng = np.random.default_rng(split.seed)
    for label in sorted(by_label):
        label_groups = by_label[label]
        total = sum(len(g) for g in label_groups)
        train_end, valid_end = split.train * total, (split.train + split.valid) * total
        placed = 0
        for k in rng.permutation(len(label_groups)):
            middle = placed + len(label_groups[k]) / 2
            name = "train" if middle < train_end else "valid" if middle < valid_end else "test"
            for r in label_groups[k]:
                r["file"].split = name
            placed += len(label_groups[k])


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


def count_by(files, classes) -> dict:
    """Images per split and class (files of unsplit data that could not be decoded have no
    split and are not counted)."""
    out = {s: {c: 0 for c in classes} for s in SPLITS}
    for f in files:
        if f.split:
            out[f.split][f.label] += 1
    return out


def split_index(kept, dup, *, classes, balance: str, size: int, dicom_window) -> dict:
    """Per split, what {split}.json holds: its rows of the images file, labels, file names."""
    splits = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(kept)
               if r["file"].split == split and i not in dup["removed"]]
        labels = [classes.index(kept[i]["file"].label) for i in idx]
        data = {"classes": list(classes), "image_size": size, "dicom_window": list(dicom_window),
                "rows": [kept[i]["row"] for i in idx], "labels": labels,
                "files": [kept[i]["file"].name for i in idx]}
        if split == "train":
            weights = balance_weights(torch.tensor(labels, dtype=torch.int64), balance,
                                      len(classes))
            data["sample_weights"], data["class_weights"] = (w.tolist() for w in weights)
        if split == "test":
            data["leak_free"] = [i in dup["leak_free"] for i in idx]
        splits[split] = data
    return splits


def write_report(*, raw_counts, kept, dup, skipped, splits, image_size, balance) -> dict:
    classes = splits["train"]["classes"]
    after = {s: {c: int((splits[s]["labels"] == i).sum()) for i, c in enumerate(classes)}
             for s in SPLITS}
    report = {
        "image_size": image_size,
        "balance": balance,
        "classes": classes,
        "counts_found": raw_counts,
        "counts_prepared": after,
        "test_leak_free": {
            c: int((splits["test"]["labels"][splits["test"]["leak_free"]] == i).sum())
            for i, c in enumerate(classes)},
        "duplicates": dup["stats"],
        "removed": [{"file": kept[i]["file"].name, "reason": why}
                    for i, why in sorted(dup["removed"].items())],
        "skipped": skipped,
    }
    write_json(DATA_REPORT_DIR / "report.json", report)
    counts = markdown_table(["split", "class", "found", "prepared"], [
        [s, c, raw_counts[s][c], after[s][c]] for s in SPLITS for c in classes])
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
    classes = report["classes"]
    plots.class_distribution({"found": raw_counts, "prepared": report["counts_prepared"]},
                             classes, DATA_REPORT_DIR / "images/class_distribution.png")
    plots.sample_grid(splits["train"]["images"], splits["train"]["labels"], classes,
                      DATA_REPORT_DIR / "images/samples.png")
    plots.intensity_histograms(splits, classes,
                               DATA_REPORT_DIR / "images/intensity_histograms.png")
    if len(splits["train"]["images"]):
        image = splits["train"]["images"][:1].float() / 255
        generator = torch.Generator().manual_seed(0)
        views = torch.cat([image] + [augment(image, generator) for _ in range(5)])
        plots.image_row((views * 255).to(torch.uint8), ["original"] + ["augmented"] * 5,
                        DATA_REPORT_DIR / "images/augmentation_examples.png")


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, help="decoding processes (default: one per core "
                        f"from {PARALLEL_FROM} files, one below)")
    workers = parser.parse_args(argv).workers
    cfg = load_config()
    size, window = cfg.prepare.image_size, (cfg.prepare.dicom_window_center,
                                            cfg.prepare.dicom_window_width)
    files, skipped = scan_raw(RAW_DIR, cfg.data.classes)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(files) >= PARALLEL_FROM else 1
    workers = max(1, workers)
    # Built beside data/prepared and swapped in at the end: a failure keeps the previous one.
    partial = PREPARED_DIR.with_name(PREPARED_DIR.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    kept, undecodable = decode_all(files, partial / IMAGES_FILE, size=size, dicom_window=window,
                                   workers=workers)
    print(f"decoded {len(files)} files in {time.perf_counter() - started:.1f} s with {workers} "
          f"process{'es' if workers > 1 else ''}")
    skipped += undecodable
    if files and files[0].split is None:
        assign_splits(kept, cfg.data.split)
    dup = find_duplicates(kept)
    index = split_index(kept, dup, classes=cfg.data.labels, balance=cfg.prepare.balance,
                        size=size, dicom_window=window)
    for split, data in index.items():
        write_json(partial / f"{split}.json", data)
    splits = {s: load_split(s, partial) for s in SPLITS}
    raw_counts = count_by(files, cfg.data.labels)
    report = write_report(raw_counts=raw_counts, kept=kept, dup=dup, skipped=skipped,
                          splits=splits, image_size=size, balance=cfg.prepare.balance)
    write_figures(raw_counts, report, splits)
    shutil.rmtree(PREPARED_DIR, ignore_errors=True)
    partial.rename(PREPARED_DIR)
    sizes = ", ".join(f"{s} {len(d['labels'])}" for s, d in index.items())
    print(f"prepared {sizes} images at {size}px; skipped {len(skipped)} files, removed "
          f"{len(dup['removed'])} duplicates; report in {DATA_REPORT_DIR}/report.md")


if __name__ == "__main__":
    sys.exit(main())
