"""How the stages' time, time per image and peak memory grow with the size of the dataset.

On synthetic datasets 1, 10 and 100 times the size of the real one, each stage in its own process:

    python -m tools.scale [--scales 1 10 100] [--stages prepare floor train@cnn evaluate@cnn]
                          [--epochs 2] [--workdir DIR] [--keep] [--out DIR]

For each scale N it writes a dataset N times the size of Kaggle's (1000 images) in Kaggle's
layout, <workdir>/data-<N>x/Data/{train,valid,test}/<class folder>/<i>.jpg, with Kaggle's
per-split, per-class proportions. Each image is one of the 63 real slices of data/sample (same
split and class, taken in turn) rotated, zoomed, shifted, relit and given faint noise, all seeded
from the image's place in its folder: no two images are pixel-identical (so `prepare` removes
none as duplicates), and image i is the same at every scale and on every run. A complete dataset
from an earlier run (--keep) is reused.

It then runs `download` (not reported) and the chosen stages on it, each in its own process, in
<workdir>/run-<N>x/ with the repository's params.yaml and data.source=local,
train.weights=none and train.max_epochs = train.patience = --epochs, so every scale trains the
same number of epochs. Each stage's output goes to <run dir>/<stage>.log. It prints, per stage and
scale, the images the stage processed (prepare: files found; floor: prepared images; train:
epochs x (draws per epoch + valid images); evaluate: valid + test images), seconds, milliseconds
per image, the process's peak resident memory, and the ratio of milliseconds per image to that at
the smallest scale: 1.0x is linear scaling. Each scale's folders are deleted after it is measured
unless --keep (100x is about 100,000 files).

--out DIR also writes the table, under the command that made it, to
DIR/scale-<scales>-<cpu|cuda>-torch<version>.md, e.g. scale-1x-10x-100x-cpu-torch2.14.1.md.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from src.lib.config import load_config
from src.lib.data import pool_map, process_pool
from src.lib.device import cpu_share
from src.lib.errors import UserError, command
from src.lib.io import markdown_table, read_json
from src.lib.paths import PARAMS_FILE, SAMPLE_DIR
from tools.measurement import cpu_name, write_measurement

ROOT = Path(__file__).resolve().parents[1]
# Images per split and class folder in Kaggle's dataset (1000 in all); train and valid folders
# carry location and stage in their names, test folders do not.
REAL_COUNTS = {
    "train": {"adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": 195,
              "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa": 115,
              "normal": 148,
              "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa": 155},
    "valid": {"adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": 23,
              "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa": 21,
              "normal": 13,
              "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa": 15},
    "test": {"adenocarcinoma": 120, "large.cell.carcinoma": 51, "normal": 54,
             "squamous.cell.carcinoma": 90},
}
STAGE = re.compile(r"(prepare|floor)|(train|evaluate)@([\w.-]+)")


# --- the synthetic dataset ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def sample_image(path: Path) -> Image.Image:
    """Each worker decodes each of the 63 sample slices once. A plain RGB conversion: none of
    them has transparent pixels, which src.lib.data.decode_rgb would turn black."""
    with Image.open(path) as image:
        return image.convert("RGB")


def varied(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A plausible other slice: rotated within 8 degrees, zoomed 0.9-1.1, shifted up to 4 pixels,
    brightness and contrast within 10%, plus faint noise so that no two outputs share pixels."""
    angle = math.radians(rng.uniform(-8, 8))
    zoom = rng.uniform(0.9, 1.1)
    shift_x, shift_y = rng.uniform(-4, 4, size=2)
    # PIL's affine maps each output pixel back to the input: rotate and unzoom about the centre.
    cx, cy = image.width / 2, image.height / 2
    a, b = math.cos(angle) / zoom, math.sin(angle) / zoom
    ox, oy = cx + shift_x, cy + shift_y
    moved = image.transform(image.size, Image.Transform.AFFINE,
                            (a, b, cx - a * ox - b * oy, -b, a, cy + b * ox - a * oy),
                            resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    pixels = np.asarray(moved, dtype=np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)
    # One noise plane for all three channels: the slice stays gray, as CT slices are.
    pixels += rng.normal(0, 2.0, size=pixels.shape[:2])[..., None]
    return Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), "RGB")


def write_one(task: tuple[Path, Path, tuple[int, int, int]]) -> None:
    source, target, seed = task
    rng = np.random.default_rng(seed)
    varied(sample_image(source), rng).save(target, quality=90)


def scaled_counts(scale: int) -> dict:
    return {split: {folder: n * scale for folder, n in folders.items()}
            for split, folders in REAL_COUNTS.items()}


def synthetic_tasks(data_dir: Path, counts: dict) -> list:
    """(sample slice, output file, seed) per image. The seed is the image's split, class folder
    and index in it, not the scale, so image i is the same at every scale."""
    tasks = []
    for s, (split, folders) in enumerate(counts.items()):
        for c, (folder, n) in enumerate(folders.items()):
            sources = sorted(p for p in (ROOT / SAMPLE_DIR / "Data" / split / folder).iterdir()
                             if p.is_file())
            out = data_dir / "Data" / split / folder
            out.mkdir(parents=True, exist_ok=True)
            tasks += [(sources[i % len(sources)], out / f"{i}.jpg", (s, c, i)) for i in range(n)]
    return tasks


def write_synthetic(data_dir: Path, scale: int = 1, counts: dict | None = None,
                    workers: int | None = None) -> Path:
    """Kaggle's layout under data_dir/Data with `counts` images per split and class folder
    (default: the real counts times `scale`). A folder already holding that many images is
    reused as it is."""
    counts = counts or scaled_counts(scale)
    total = sum(n for folders in counts.values() for n in folders.values())
    if data_dir.is_dir() and sum(1 for _ in data_dir.rglob("*.jpg")) == total:
        print(f"{data_dir}: reusing its {total} images", flush=True)
        return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)  # an interrupted run's partial set
    tasks = synthetic_tasks(data_dir, counts)
    workers = workers or cpu_share()
    start, step = time.perf_counter(), max(100, total // 10)
    with process_pool(workers) as pool:
        # Chunks of images per task amortize the inter-process messages over cheap images.
        for done, _ in enumerate(pool_map(pool, write_one, tasks, chunksize=32,
                                          doing="writing synthetic images"), 1):
            if done % step == 0 or done == total:
                print(f"{data_dir.name}: {done}/{total} images", flush=True)
    print(f"{data_dir.name}: written in {time.perf_counter() - start:.0f} s", flush=True)
    return data_dir


# --- running and measuring the stages ----------------------------------------------------------

def check_stages(stages: list[str]) -> None:
    """Fail before generating anything: an unknown stage or variant, or a stage without the
    output it reads (each scale's run folder starts empty)."""
    variants = load_config(ROOT / PARAMS_FILE).variants
    for i, stage in enumerate(stages):
        match = STAGE.fullmatch(stage)
        if not match:
            raise UserError(f"--stages: unknown stage '{stage}'; use prepare, floor, "
                            "train@<variant> or evaluate@<variant>")
        if match[3] and match[3] not in variants:
            raise UserError(f"--stages {stage}: unknown variant '{match[3]}'; use one of "
                            f"{', '.join(variants)}")
        kind = match[1] or match[2]
        needs = None if kind == "prepare" else f"train@{match[3]}" if kind == "evaluate" else \
            "prepare"
        if needs and needs not in stages[:i]:
            raise UserError(f"--stages: {stage} reads what {needs} writes; list {needs} "
                            "before it")


def make_run_dir(run_dir: Path, data_dir: Path, epochs: int) -> Path:
    """A fresh project folder: the repository's code (linked, not copied) and its params.yaml
    pointed at the synthetic data, without ImageNet weights (same compute, no download) and with
    a fixed number of epochs (no early stop), so that every scale does the same work per image."""
    shutil.rmtree(run_dir, ignore_errors=True)  # no resumable training or outputs from before
    run_dir.mkdir(parents=True)
    (run_dir / "src").symlink_to(ROOT / "src", target_is_directory=True)
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text())
    params["data"].update(source="local", archive=str(data_dir.resolve()))
    params["train"].update(weights="none", max_epochs=epochs, patience=epochs)
    (run_dir / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    return run_dir


def stage_command(stage: str) -> list[str]:
    match = STAGE.fullmatch(stage)
    if stage == "download" or match[1]:
        return [sys.executable, "-m", f"src.{stage}"]
    return [sys.executable, "-m", f"src.{match[2]}", match[3]]


def run_stage(stage: str, run_dir: Path, scale: int) -> tuple[float, float]:
    """(seconds, peak resident MB) of one stage in its own process. os.wait4 gives that
    process's own peak, which resource.getrusage(RUSAGE_CHILDREN) would mix across stages."""
    log = run_dir / f"{stage}.log"
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(stage_command(stage), cwd=run_dir, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode:
        raise UserError(f"{stage} failed at scale {scale}x (exit status {process.returncode}); "
                        f"see {log}")
    return seconds, usage.ru_maxrss / 1024  # kilobytes on Linux


def images_processed(stage: str, run_dir: Path) -> int:
    """What the stage went through, read from the run folder after it ran."""
    if stage == "prepare":
        return sum(1 for p in (run_dir / "data/raw").rglob("*") if p.is_file())
    prepared = read_json(run_dir / "reports/data/report.json")["counts_prepared"]
    per_split = {split: sum(classes.values()) for split, classes in prepared.items()}
    if stage == "floor":
        return sum(per_split.values())
    step, variant = stage.split("@")
    if step == "evaluate":
        return per_split["valid"] + per_split["test"]
    draws = load_config(run_dir / PARAMS_FILE).variant(variant).train.draws_per_epoch
    epochs = read_json(run_dir / "dvclive" / variant / "metrics.json")["epochs"]
    # Each epoch draws its images from train (0: as many as train holds), then scores valid.
    return epochs * ((draws or per_split["train"]) + per_split["valid"])


def measure_scale(scale: int, stages: list[str], epochs: int, workdir: Path,
                  keep: bool) -> list[dict]:
    data_dir = write_synthetic(workdir / f"data-{scale}x", scale)
    run_dir = make_run_dir(workdir / f"run-{scale}x", data_dir, epochs)
    run_stage("download", run_dir, scale)  # a copy of the data: not what is measured
    results = []
    for stage in stages:
        seconds, peak_mb = run_stage(stage, run_dir, scale)
        images = images_processed(stage, run_dir)
        print(f"{scale}x {stage}: {images} images in {seconds:.1f} s", flush=True)
        results.append({"stage": stage, "scale": scale, "images": images, "seconds": seconds,
                        "peak_mb": peak_mb})
    if not keep:  # only after success: a failed stage's log stays for the user to read
        shutil.rmtree(run_dir)
        shutil.rmtree(data_dir)
    return results


# --- the report ---------------------------------------------------------------------------------

def ms_per_image(result: dict) -> float:
    return 1000 * result["seconds"] / result["images"] if result["images"] else float("nan")


def scale_table(results: list[dict], stages: list[str]) -> str:
    """One row per stage and scale, a stage's scales together, smallest first."""
    rows = []
    for stage in stages:
        mine = sorted((r for r in results if r["stage"] == stage), key=lambda r: r["scale"])
        for r in mine:
            ratio = ms_per_image(r) / ms_per_image(mine[0])
            rows.append([stage, f"{r['scale']}x", r["images"], f"{r['seconds']:.1f}",
                         f"{ms_per_image(r):.2f}", f"{r['peak_mb']:.0f}", f"{ratio:.2f}x"])
    return markdown_table(["stage", "scale", "images", "seconds", "ms per image", "peak MB",
                           "ms per image vs smallest scale"], rows)


@command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100],
                        help="dataset sizes, in multiples of Kaggle's 1000 images")
    parser.add_argument("--stages", nargs="+", default=["prepare", "floor", "train@cnn",
                                                        "evaluate@cnn"],
                        help="prepare, floor, train@<variant>, evaluate@<variant>, in order")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs of every training run, at every scale (no early stop)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "chest-ct-scale",
                        help="where the datasets and run folders go (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each scale's dataset and run folder (a rerun reuses the "
                             "dataset)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="also write the table to "
                             "DIR/scale-<scales>-<device>-torch<version>.md")
    args = parser.parse_args()
    if min(args.scales) < 1 or args.epochs < 1:
        raise UserError("--scales and --epochs: whole numbers of at least 1")
    check_stages(args.stages)
    scales = sorted(set(args.scales))
    results = []
    for scale in scales:
        results += measure_scale(scale, args.stages, args.epochs, args.workdir, args.keep)
    text = (f"{cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
            f"{args.epochs} epochs per training run; synthetic data at "
            f"{', '.join(f'{s}x' for s in scales)} Kaggle's 1000 images\n\n"
            + scale_table(results, args.stages))
    print("\n" + text, end="")
    if args.out:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sizes = "-".join(f"{s}x" for s in scales)
        path = args.out / f"scale-{sizes}-{device}-torch{torch.__version__.split('+')[0]}.md"
        write_measurement(path, "tools.scale", sys.argv[1:], text)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
