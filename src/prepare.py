"""Stage `prepare`: data/raw -> data/prepared: images.npy and {train,valid,test}.json.

    python -m src.prepare [--workers N]

Decodes every image once (with all cores from data.PARALLEL_FROM files) straight into the
memory-mapped images file (one letterboxed row per file, at `prepare.image_size`); groups images
that must stay together (identical, near-duplicate, one patient's: src/lib/groups.py); splits
data that came without splits by group (and, with `prepare.fold`, deals train and valid into
cross-validation folds by group); removes from train and valid every group member of a
group with a test image, and identical images whose labels conflict; computes the class
balancing. Each split's JSON lists its rows of images.npy with labels and file
names. Writes the data report with its figures to reports/data/. The output does not depend on
--workers.
"""
from __future__ import annotations

import argparse
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
    pool_map, process_pool
)
from src.lib.device import cpu_share
from src.lib.errors import UserError, command
from src.lib.io import MappedArray, file_digest, markdown_table, write_json, write_text
from src.lib.paths import DATA_REPORT_DIR, PREPARED_DIR, RAW_DIR
from src.lib.groups import dicom_patient, group_records, perceptual_hash, read_groups_file
from src.lib.raw import find_data_root, scan_raw
from src.lib.transforms import augment

_worker = {}  # each decoding process's open images file and settings


def _open_images(images_path, size: int, dicom_window) -> None:
    _worker.update(store=MappedArray(images_path, writable=True), size=size, window=dicom_window)


def _start_worker(*settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    _open_images(*settings)


def _decode_one(job) -> tuple[int, dict]:
    """Decode file `row` into its row of the images file: its digests, perceptual hash and
    (DICOM) patient, or why it was skipped."""
    row, path = job
    try:
        im = decode_image(path, _worker["window"])
    except Exception as e:  # any decoder failure skips the file; the report says why
        return row, {"reason": str(e).splitlines()[0] if str(e) else type(e).__name__}
    _worker["store"].write(row, letterbox(im, _worker["size"]).transpose(2, 0, 1))
    patient = dicom_patient(path) if path.suffix.lower() == ".dcm" else None
    return row, {"bytes": file_digest(path), "pixels": pixel_digest(im),
                 "phash": perceptual_hash(im), "patient": patient}


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
        results = pool_map(pool, _decode_one, jobs, chunksize=16, doing="decoding images")
    kept, skipped = [], []
    try:
        for row, outcome in tqdm(results, total=len(jobs), desc="decode", unit="img"):
            if "reason" in outcome:
                skipped.append({"file": files[row].name, "reason": outcome["reason"]})
            else:
                kept.append({"file": files[row], "row": row, **outcome})
    finally:
        if pool is not None:  # all results are in, or we are stopping early
            pool.shutdown(cancel_futures=True)
    return kept, skipped


def deal(records: list[dict], shares, seed: int) -> None:
    """Per label, the groups (groups.group_records: identical images, near-duplicates, one
    patient's slices) in a seeded order fill bucket 0, then 1, ..., each bucket taking its share
    of the label's images and each group whole; a group goes where its middle falls, under the
    label of its first image. Sets each record's "bucket"."""
    groups = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r)
    by_label = defaultdict(list)
    for members in groups.values():
        by_label[members[0]["file"].label].append(members)
    ends = np.cumsum(shares) / sum(shares)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        label_groups = by_label[label]
        total = sum(len(g) for g in label_groups)
        placed = 0
        for k in rng.permutation(len(label_groups)):
            middle = (placed + len(label_groups[k]) / 2) / total
            bucket = min(int(np.searchsorted(ends, middle, side="right")), len(shares) - 1)
            for r in label_groups[k]:
                r["bucket"] = bucket
            placed += len(label_groups[k])


def assign_splits(records: list[dict], split) -> None:
    """For data without splits: train, valid and test by group (`deal`), so that nothing in
    one split has a copy or a sibling in another."""
    deal(records, (split.train, split.valid, split.test), split.seed)
    for r in records:
        r["file"].split = SPLITS[r["bucket"]]


def assign_fold(records: list[dict], folds: int, fold: int, seed: int) -> None:
    """Cross-validation (`prepare.fold`): train and valid pooled and dealt by group into
    `folds` equal folds, the same ones whatever `fold` is; fold `fold` becomes valid, the rest
    train. Test is not touched."""
    pool = [r for r in records if r["file"].split in ("train", "valid")]
    deal(pool, [1] * folds, seed)
    for r in pool:
        r["file"].split = "valid" if r["bucket"] == fold else "train"


def find_leaks(records: list[dict]) -> dict:
    """Per group (groups.group_records), what train and valid must lose:

    - a group with a test member: its train and valid members leak into test;
    - a group spanning train and valid: its valid members would reward memorizing train;
    - identical images under two labels in train/valid: all of them are dropped (one slice
      cannot be both; near-duplicates and one patient's slices may differ in label).
    The test split is never changed; its leak-free part is the test images whose group has no
    train or valid member, each set of identical ones counted once."""
    groups, identical = defaultdict(list), defaultdict(list)
    for i, r in enumerate(records):
        groups[r["group"]].append(i)
        identical[r["pixels"]].append(i)
    removed, leak_free, seen = {}, set(), set()
    stats = Counter()
    for members in identical.values():
        if len(members) > 1:
            stats["duplicate_groups"] += 1
            stats["duplicate_files"] += len(members)
            stats["byte_identical_groups"] += len({records[i]["bytes"] for i in members}) == 1
    for members in groups.values():
        splits = {records[i]["file"].split for i in members}
        stats["cross_split_groups"] += len(splits) > 1
        has_test = "test" in splits
        for i in members:
            split = records[i]["file"].split
            if split == "test" and splits == {"test"} and records[i]["pixels"] not in seen:
                leak_free.add(i)
                seen.add(records[i]["pixels"])
            elif split != "test" and has_test:
                removed[i] = "in a group with a test image"
            elif split == "valid" and "train" in splits:
                removed[i] = "in a group with a train image"
    for members in identical.values():
        kept = [i for i in members if records[i]["file"].split != "test" and i not in removed]
        if len({records[i]["file"].label for i in kept}) > 1:
            stats["conflicting_label_groups"] += 1
            for i in kept:
                removed[i] = "identical images with conflicting labels"
    return {"removed": removed, "leak_free": leak_free, "stats": dict(stats)}


def groups_file(root, data) -> dict[str, str]:
    """`data.groups` at the data root, where the dataset has one: file -> group."""
    path = find_data_root(root, data.classes)[0] / data.groups
    return read_groups_file(path) if data.groups and path.is_file() else {}


def count_by(files, classes) -> dict:
    """Images per split and class (files of unsplit data that could not be decoded have no
    split and are not counted)."""
    out = {s: {c: 0 for c in classes} for s in SPLITS}
    for f in files:
        if f.split:
            out[f.split][f.label] += 1
    return out


def split_index(kept, leaks, *, classes, balance: str, size: int, dicom_window) -> dict:
    """Per split, what {split}.json holds: its rows of the images file, labels, file names;
    train's class balancing, test's leak-free mask and groups (which the bootstrap resamples)."""
    splits = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(kept)
               if r["file"].split == split and i not in leaks["removed"]]
        labels = [classes.index(kept[i]["file"].label) for i in idx]
        data = {"classes": list(classes), "image_size": size, "dicom_window": list(dicom_window),
                "rows": [kept[i]["row"] for i in idx], "labels": labels,
                "files": [kept[i]["file"].name for i in idx]}
        if split == "train":
            weights = balance_weights(torch.tensor(labels, dtype=torch.int64), balance,
                                      len(classes))
            data["sample_weights"], data["class_weights"] = (w.tolist() for w in weights)
        if split == "test":
            data["leak_free"] = [i in leaks["leak_free"] for i in idx]
            data["groups"] = [kept[i]["group"] for i in idx]
        splits[split] = data
    return splits


def check_every_class_left(index: dict, raw_counts: dict) -> None:
    """Every split needs images of every class: the models, the class weights and every
    per-class score assume them."""
    for split, data in index.items():
        for label, name in enumerate(data["classes"]):
            if label not in data["labels"]:
                raise UserError(
                    f"prepare: no {name} images left in {split} ({raw_counts[split][name]} "
                    "found, none left after decoding and duplicate removal; "
                    f"{DATA_REPORT_DIR}/report.md is not rewritten); add {name} images to "
                    f"{split}, or leave the data unsplit so that data.split divides it")


def write_report(*, raw_counts, kept, leaks, near, skipped, splits, image_size, balance,
                 fold: str | None) -> dict:
    classes = splits["train"]["classes"]
    after = {s: {c: int((splits[s]["labels"] == i).sum()) for i, c in enumerate(classes)}
             for s in SPLITS}
    report = {
        "image_size": image_size,
        "balance": balance,
        "fold": fold,
        "classes": classes,
        "counts_found": raw_counts,
        "counts_prepared": after,
        "test_leak_free": {
            c: int((splits["test"]["labels"][splits["test"]["leak_free"]] == i).sum())
            for i, c in enumerate(classes)},
        "duplicates": leaks["stats"],
        "near_duplicates": [{"files": [kept[i]["file"].name, kept[j]["file"].name],
                             "distance": d} for i, j, d in near],
        "removed": [{"file": kept[i]["file"].name, "reason": why}
                    for i, why in sorted(leaks["removed"].items())],
        "skipped": skipped,
    }
    write_json(DATA_REPORT_DIR / "report.json", report)
    counts = markdown_table(["split", "class", "found", "prepared"], [
        [s, c, raw_counts[s][c], after[s][c]] for s in SPLITS for c in classes])
    lines = ["# Data report", "", f"Letterboxed to {image_size}x{image_size}; balancing: {balance}."
             + (f" Cross-validation: {fold} validates, train and valid pooled." if fold else ""),
             "", counts.rstrip()]
    lines += ["", f"Leak-free test images: {sum(report['test_leak_free'].values())} "
              f"{report['test_leak_free']}", "", "Groups: " + ", ".join(
                  f"{k} {v}" for k, v in leaks["stats"].items()), "",
              f"Near-duplicate pairs (pHash, not identical): {len(near)}",
              *[f"- {' and '.join(n['files'])}: {n['distance']} bits"
                for n in report["near_duplicates"]], "",
              f"Removed from train/valid: {len(report['removed'])}",
              *[f"- {r['file']}: {r['reason']}" for r in report["removed"]], "",
              f"Skipped files: {len(skipped)}",
              *[f"- {s['file']}: {s['reason']}" for s in skipped]]
    write_text(DATA_REPORT_DIR / "report.md", "\n".join(lines) + "\n")
    return report


def write_figures(raw_counts, report, splits, kept, near, images_path) -> None:
    classes = report["classes"]
    if near:  # the farthest pairs, side by side: the merges a reader should judge
        store = MappedArray(images_path)
        shown = sorted(near, key=lambda n: -n[2])[:4]
        plots.image_row(torch.from_numpy(store.read([kept[k]["row"] for i, j, _ in shown
                                                     for k in (i, j)])),
                        [f"{kept[k]['file'].name[-24:]}\n{d} bits" for i, j, d in shown
                         for k in (i, j)], DATA_REPORT_DIR / "images/near_duplicates.png")
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
    parser.add_argument("--workers", type=int, help="decoding processes (default: one per "
                        f"usable core from {PARALLEL_FROM} files, one below)")
    workers = parser.parse_args(argv).workers
    cfg = load_config()
    size, window = cfg.prepare.image_size, (cfg.prepare.dicom_window_center,
                                            cfg.prepare.dicom_window_width)
    files, skipped = scan_raw(RAW_DIR, cfg.data.classes)
    if workers is None:
        workers = cpu_share() if len(files) >= PARALLEL_FROM else 1
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
    grouping = group_records(kept, distance=cfg.prepare.near_duplicate_distance,
                             groups=groups_file(RAW_DIR, cfg.data))
    if files and files[0].split is None:
        assign_splits(kept, cfg.data.split)
    fold = None
    if cfg.prepare.fold is not None:
        assign_fold(kept, cfg.prepare.folds, cfg.prepare.fold, cfg.data.split.seed)
        fold = f"fold {cfg.prepare.fold} of {cfg.prepare.folds}"
    leaks = find_leaks(kept)
    leaks["stats"] |= {"groups": grouping["groups"], "patients": grouping["patients"],
                       "near_duplicate_pairs": len(grouping["near_duplicate_pairs"])}
    index = split_index(kept, leaks, classes=cfg.data.labels, balance=cfg.prepare.balance,
                        size=size, dicom_window=window)
    raw_counts = count_by(files, cfg.data.labels)
    check_every_class_left(index, raw_counts)
    for split, data in index.items():
        write_json(partial / f"{split}.json", data)
    splits = {s: load_split(s, partial) for s in SPLITS}
    near = grouping["near_duplicate_pairs"]
    report = write_report(raw_counts=raw_counts, kept=kept, leaks=leaks, near=near,
                          skipped=skipped, splits=splits, image_size=size,
                          balance=cfg.prepare.balance, fold=fold)
    write_figures(raw_counts, report, splits, kept, near, partial / IMAGES_FILE)
    shutil.rmtree(PREPARED_DIR, ignore_errors=True)
    partial.rename(PREPARED_DIR)
    sizes = ", ".join(f"{s} {len(d['labels'])}" for s, d in index.items())
    print(f"prepared {sizes} images at {size}px; skipped {len(skipped)} files, removed "
          f"{len(leaks['removed'])} leaked or conflicting images; report in "
          f"{DATA_REPORT_DIR}/report.md")


if __name__ == "__main__":
    sys.exit(main())
