"""Training throughput of the pipeline's step against a plain PyTorch loop like the study's.

Both run in the same run of this script, on the same data, for the same training run.

    python -m tools.bench [--quick] [--epochs 30] [--plain-epochs 1] [--variants cnn resnet50 ...]
    python -m tools.bench --compile           # also the pipeline's step under torch.compile
    python -m tools.bench --repro ARCHIVE     # a full `dvc repro` on the real data, timed per stage
    python -m tools.bench --queue ARCHIVE     # two queued experiments side by side, or in turn
    python -m tools.bench --startup           # what each stage pays to import, against torch

Needs data/raw and data/prepared (`dvc repro prepare`). For each variant it trains, each in a
fresh process so that peak memory is its own:
  plain     ImageFolder over the image files, PIL decode and torchvision transforms per sample,
            a weighted sampler, the full model forward and backward with frozen parameters
            (float32, BatchNorm statistics drifting, as the study did);
  pipeline  this project's step, from the same engine.training_setup and train_one_epoch that
            `train` calls (so the two cannot drift): prepared uint8 tensors, frozen layers run
            once per image and augmentation view, bfloat16 and channels_last where they help;
            the time of `prepare`'s decoding and of building the cache is counted in.
and prints images per second over the whole run (setup included) and over the epochs alone,
their ratios and peak memory as a Markdown table. The pipeline runs every epoch of the training
run (default: train.max_epochs, no early stopping). The plain loop has no setup and the same cost
every epoch, so its throughput is measured over its first --plain-epochs epochs (their spread is
printed): 30 of its epochs of 4000 draws would take about 11 hours for the five variants on a
2-core CPU.
It loads in the main process, as a DataLoader does by default; --plain-workers N gives it N
worker processes.

--compile adds a row per variant: the pipeline's step with its trained part under
torch.compile, the compile time counted in (the first epoch pays it). The pipeline does not
compile; this row shows whether it would pay.

--repro clones the committed project into a temporary folder, points `data` at the archive
(source=local) with train.weights=none, runs every stage of `dvc repro` on its own and prints
the wall time of each, then the comparison table.

--queue, on such a clone, queues two `train@cnn` experiments and times `dvc queue start -j 1`
(one after the other) against -j 2 (side by side, each with its share of the CPUs).

--startup times importing torch._dynamo, torchvision and each module of src/ (or the modules
named) in a fresh Python, best of 3, against `import torch` alone, and names the heavy libraries
each loads: every run of a stage pays it before any work, 15 times in a full `dvc repro`.

--out DIR also writes what it prints (table, or --repro, --predict or --startup timings) to a
file named by the conditions it was measured under (device, precision, torch version), e.g.
`--out docs/measurements`.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision import datasets
from torchvision import transforms as T

from src.lib.architectures import ARCHITECTURES
from src.lib.checkpoint import save_checkpoint
from src.lib.config import load_config
from src.lib.data import IMAGES_FILE, PreparedImages, balance_weights, decode_rgb, letterbox
from src.lib.device import autocast_dtype, environment, pick_device, seed_everything
from src.lib.engine import epoch_sampler, train_one_epoch, training_setup
from src.lib.errors import UserError, command
from src.lib.inference import classify, load_classifier, read_image
from src.lib.io import MappedArray, markdown_row, markdown_table
from src.lib.models import build_model, forward_train
from src.lib.paths import RAW_DIR
from src.lib.raw import scan_raw
from tools.measurement import cpu_name, write_measurement


def without_download(variant):
    """Random initialization: the same compute as ImageNet weights, and no download."""
    return replace(variant, train=replace(variant.train, weights="none"))


def plain_loader(variant, draws: int, workers: int) -> DataLoader:
    """The study's input pipeline: decode and transform every drawn sample."""
    spec = ARCHITECTURES[variant.arch]
    steps = [T.Lambda(lambda im: letterbox(im, variant.image_size)), T.ToPILImage(),
             T.RandomHorizontalFlip(), T.RandomRotation(10), T.ColorJitter(0.1, 0.1)]
    if spec.grayscale:
        steps.append(T.Grayscale())
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    dataset = datasets.ImageFolder(str(RAW_DIR / "Data/train"), transform=T.Compose(steps),
                                   loader=decode_rgb)
    counts = torch.bincount(torch.tensor(dataset.targets)).float()
    weights = (1 / counts)[dataset.targets]
    sampler = WeightedRandomSampler(weights, draws, replacement=True)
    return DataLoader(dataset, batch_size=variant.train.batch_size, sampler=sampler,
                      num_workers=workers)


def timed_epochs(epochs: int, run_epoch) -> list[float]:
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        run_epoch(epoch)
        times.append(time.perf_counter() - start)
    return times


def run_plain(variant, *, epochs: int, draws: int, device, workers: int
              ) -> tuple[float, list[float]]:
    """(setup seconds, seconds per epoch) of the study's loop."""
    num_classes = len(load_config().data.classes)
    model = build_model(variant, num_classes).to(device).train()  # frozen BN drifts, as the study
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=variant.train.lr)
    criterion = nn.CrossEntropyLoss()

    def epoch(_):
        for x, y in plain_loader(variant, draws, workers):
            loss, _ = forward_train(model, (x.to(device),), y.to(device), criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return 0.0, timed_epochs(epochs, epoch)


def run_pipeline(variant, *, epochs: int, draws: int, device, compiled: bool = False
                 ) -> tuple[float, list[float]]:
    """(setup seconds, seconds per epoch) of this project's training step. Setup: what
    `prepare` does once (charged in full to every variant) and the cache of frozen layers."""
    start = time.perf_counter()
    cfg = load_config()
    classes, prepare = cfg.data.labels, cfg.prepare
    files = [f for f in scan_raw(RAW_DIR, cfg.data.classes)[0] if f.split == "train"]
    size = prepare.image_size
    store = MappedArray.create(Path(tempfile.mkdtemp()) / IMAGES_FILE, (len(files), 3, size, size),
                               np.uint8)  # as `prepare` writes them
    for row, f in enumerate(files):
        store.write(row, letterbox(decode_rgb(f.path), size).transpose(2, 0, 1))
    images = PreparedImages(store, np.arange(len(files)))
    labels = torch.tensor([classes.index(f.label) for f in files])
    sample_weights, class_weights = balance_weights(labels, prepare.balance, len(classes))
    t = variant.train
    dtype = autocast_dtype(t.precision, device)
    model = build_model(variant, len(classes)).to(device, memory_format=torch.channels_last)
    train = {"images": images, "labels": labels, "sample_weights": sample_weights,
             "class_weights": class_weights}
    setup = training_setup(model, variant, train, device=device, dtype=dtype)
    if compiled:
        setup.head = torch.compile(setup.head)
    setup_seconds = time.perf_counter() - start

    sampler = epoch_sampler(variant, train, draws=draws)

    def epoch(i):
        sampler.set_epoch(i + 1)
        train_one_epoch(setup, sampler, device=device, dtype=dtype, desc=f"epoch {i + 1}")
    return setup_seconds, timed_epochs(epochs, epoch)


def measure(name: str, method: str, *, epochs: int, draws: int, workers: int) -> dict:
    """One (variant, method) in this process: images per second over the whole run (setup
    included) and over the epochs alone, the slowest and fastest epoch, and peak memory."""
    variant = without_download(load_config().variant(name))
    seed_everything(variant.train.seed)
    device = pick_device(variant.train.device)
    if method == "plain":
        setup, epoch_seconds = run_plain(variant, epochs=epochs, draws=draws, device=device,
                                         workers=workers)
    else:
        setup, epoch_seconds = run_pipeline(variant, epochs=epochs, draws=draws, device=device,
                                            compiled=method == "compiled")
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    images = epochs * draws
    return {"variant": name, "method": method, "setup_s": round(setup, 1),
            "epoch_s": round(sum(epoch_seconds) / epochs, 2),
            "epoch_s_range": [round(min(epoch_seconds), 2), round(max(epoch_seconds), 2)],
            "images_per_s": round(images / (setup + sum(epoch_seconds)), 2),
            "epoch_images_per_s": round(draws * epochs / sum(epoch_seconds), 2),
            "peak_mb": round(peak)}


def run_in(work: Path, *cmd) -> str:
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"{' '.join(cmd[:3])} failed: "
                        f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return done.stdout


def project_on(archive: str) -> tuple[Path, str]:
    """(a clone of the committed project in a temporary folder with `data` pointed at the
    archive (source=local) and train.weights=none, its commit)."""
    if not Path(archive).exists():
        raise UserError(f"{archive}: not found; give the zip from the dataset's Kaggle page")
    work = Path(tempfile.mkdtemp(prefix="bench-")) / "project"
    run_in(Path("."), "git", "clone", "-q", ".", str(work))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="local", archive=str(Path(archive).resolve()))
    params["train"]["weights"] = "none"  # ImageNet weights may be out of reach; same compute
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work, run_in(work, "git", "rev-parse", "--short", "HEAD").strip()


def timed_repro(archive: str, emit) -> None:
    """Every stage of a full `dvc repro` on the real data, each timed on its own."""
    work, commit = project_on(archive)
    stages = run_in(work, "dvc", "stage", "list", "--name-only").split()
    emit(f"{machine()}; `dvc repro` of commit {commit} on {Path(archive).name}, "
         "train.weights=none\n")
    emit(markdown_table(["stage", "seconds"], []).rstrip())
    total = time.perf_counter()
    for stage in stages:
        start = time.perf_counter()
        done = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=work,
                              capture_output=True, text=True)
        (work / f"repro-{stage}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise UserError(f"{stage} failed; see {work}/repro-{stage}.log")
        emit(markdown_row([stage, f"{time.perf_counter() - start:.0f}"]))
    emit(markdown_row(["total", f"{time.perf_counter() - total:.0f}"]) + "\n")
    emit((work / "reports/comparison.md").read_text())


def run_queue(work: Path, jobs: int) -> float:
    """Seconds from `dvc queue start -j jobs` until nothing is queued or running. A worker that
    stops with work queued (docs/parallel.md) is started again."""
    start = time.perf_counter()
    while True:
        with open(work / "queue-start.log", "a") as log:  # its workers hold a pipe open
            subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=work, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        while re.search(r"\b(Queued|Running)\b", status := run_in(work, "dvc", "queue",
                                                                  "status")):
            if "Running" not in status and "0 active, 0 idle" in status:
                break
            time.sleep(2)
        else:
            if "Failed" in status:
                raise UserError(f"a queued experiment failed in {work}: {status}")
            return time.perf_counter() - start


def timed_queue(archive: str, emit, epochs: int = 2) -> None:
    """Two queued experiments (train@cnn, `epochs` epochs) run side by side (`dvc queue start
    -j 2`) against one after the other (-j 1), on the real data; each pair with its own seeds,
    so that the run-cache holds none of them."""
    work, commit = project_on(archive)
    run_in(work, "dvc", "repro", "prepare")
    run_in(work, "git", "add", "-A")
    run_in(work, "git", "commit", "-qm", "prepared")  # queued experiments start from HEAD
    emit(f"{machine()}; two queued `train@cnn` experiments of {epochs} epochs, commit {commit}, "
         f"on {Path(archive).name}\n")
    emit(markdown_table(["dvc queue start", "seconds for both", "against -j 1"], []).rstrip())
    seconds = {}
    for jobs, seeds in ((1, (1, 2)), (2, (3, 4))):
        for seed in seeds:
            run_in(work, "dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}", "-S",
                   f"train.max_epochs={epochs}", "train@cnn")
        seconds[jobs] = run_queue(work, jobs)
        emit(markdown_row([f"-j {jobs}", f"{seconds[jobs]:.0f}",
                           f"{seconds[jobs] / seconds[1]:.2f}x"]))
    shown = json.loads(run_in(work, "dvc", "exp", "show", "--json"))
    threads = sorted({e["revs"][0]["data"]["metrics"]["dvclive/cnn/metrics.json"]["data"]
                      ["threads"] for e in shown[1]["experiments"] or []})
    emit(f"\ntorch threads per experiment (dvclive/cnn/metrics.json): {threads}")


def timed_predict(emit) -> None:
    """`predict` with a ResNet-50 checkpoint on a test image: seconds to load the model and to
    classify the image (decode, letterbox, frame, forward), best of three, Python and torch
    start-up aside."""
    cfg = load_config()
    image = next(f.path for f in scan_raw(RAW_DIR, cfg.data.classes)[0] if f.split == "test")
    variant = without_download(cfg.variant("resnet50"))
    path = Path(tempfile.mkdtemp()) / "model.pt"
    prepared = {"classes": list(cfg.data.labels), "image_size": cfg.prepare.image_size,
                "dicom_window": [cfg.prepare.dicom_window_center, cfg.prepare.dicom_window_width]}
    save_checkpoint(path, variant, build_model(variant, len(cfg.data.labels)).state_dict(),
                    prepared)
    load, classify_one = [], []
    for _ in range(3):
        start = time.perf_counter()
        clf = load_classifier(path)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        classify(clf, read_image(clf, image)[None])
        classify_one.append(time.perf_counter() - start)
    emit(f"{machine()}; `predict` with a ResNet-50 checkpoint on {image.name}, best of 3: "
         f"loading it {min(load):.3f} s, classifying the image {min(classify_one):.3f} s")


HEAVY_LIBRARIES = ("torch", "torchvision", "torch._dynamo", "sklearn", "matplotlib")


def import_seconds(module: str) -> tuple[float, list[str]]:
    """Seconds to import `module` in a fresh Python, best of 3, and the heavy libraries it
    loaded."""
    probe = (f"import sys, time; start = time.perf_counter(); import {module}; "
             f"print(time.perf_counter() - start, "
             f"*[m for m in {HEAVY_LIBRARIES!r} if m in sys.modules])")
    runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"import {module} failed: "
                            f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        seconds, *loaded = done.stdout.split()
        runs.append((float(seconds), loaded))
    return min(runs)


def timed_startup(modules: list[str], emit) -> None:
    """What each stage pays before its work: importing its module, against `import torch`."""
    # The libraries themselves first, to show where a stage's seconds go: torchvision imports
    # torch._dynamo whatever a stage uses of it.
    modules = modules or ["torch._dynamo", "torchvision",
                          *(f"src.{p.stem}" for p in sorted(Path("src").glob("*.py"))
                            if p.stem != "__init__")]
    baseline, _ = import_seconds("torch")
    emit(f"{machine()}; importing each module in a fresh Python, best of 3; `import torch` "
         f"alone: {baseline:.2f} s\n")
    rows = []
    for module in modules:
        seconds, loaded = import_seconds(module)
        rows.append([module, f"{seconds:.2f}", f"{seconds / baseline:.2f}x",
                     ", ".join(loaded) or "none"])
    emit(markdown_table(["module", "import s", "against import torch", "heavy libraries loaded"],
                        rows).rstrip())


def measurement_file(folder: Path, kind: str) -> Path:
    """FOLDER/<kind>-<device>-<precision>-torch<version>.md: a measured table is named by the
    conditions it was measured under, and rewritten, never edited, when they recur."""
    t = load_config().train
    device = pick_device(t.device)
    env = environment(device, autocast_dtype(t.precision, device))
    threads = f" {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    slug = "-".join(re.findall(r"[a-z0-9.]+", f"{env['device']}{threads} {env['precision']}"
                                               .lower()))
    return folder / f"{kind}-{slug}-torch{torch.__version__.split('+')[0]}.md"


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def speed_table(args, emit) -> None:
    """The plain loop against the pipeline's step, one row per variant (and compiled step)."""
    cfg = load_config()
    epochs = 1 if args.quick else args.epochs or cfg.train.max_epochs
    plain_epochs = min(args.plain_epochs, epochs)
    train_size = sum(f.split == "train" for f in scan_raw(RAW_DIR, cfg.data.classes)[0])
    emit(f"{machine()}; a training run of {epochs} epoch(s) per variant; the plain loop timed "
         f"over {plain_epochs} of them, {args.plain_workers} DataLoader workers\n")
    emit(markdown_table(["variant", "draws per epoch", "plain img/s (epoch s, min-max)",
                         "pipeline img/s (setup s)", "speed-up", "per-epoch speed-up",
                         "plain peak MB", "pipeline peak MB"], []).rstrip())
    for name in args.variants or list(cfg.variants):
        # Each variant's own training run: its draws per epoch (0 = the size of the split).
        draws = 64 if args.quick else \
            args.draws or cfg.variant(name).train.draws_per_epoch or train_size
        methods = [("plain", plain_epochs), ("pipeline", epochs)]
        if args.compile:
            methods.append(("compiled", epochs))
        result = {}
        for method, n in methods:
            cmd = [sys.executable, "-m", "tools.bench", "--one", name, method, "--epochs",
                   str(n), "--draws", str(draws), "--plain-workers", str(args.plain_workers)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise UserError(f"{name} {method}: {why}")
            result[method] = json.loads(done.stdout.strip().splitlines()[-1])
        plain = result.pop("plain")
        low, high = plain["epoch_s_range"]
        for method, ours in result.items():
            label = name + (", torch.compile" if method == "compiled" else "")
            emit(markdown_row([
                label, draws, f"{plain['images_per_s']} ({low}-{high})",
                f"{ours['images_per_s']} ({ours['setup_s']})",
                f"{ours['images_per_s'] / plain['images_per_s']:.1f}x",
                f"{ours['epoch_images_per_s'] / plain['epoch_images_per_s']:.1f}x",
                plain["peak_mb"], ours["peak_mb"]]))


@command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch of 64 draws per variant")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs of the training run (default: train.max_epochs)")
    parser.add_argument("--plain-epochs", type=int, default=1,
                        help="epochs over which the plain loop's throughput is measured")
    parser.add_argument("--plain-workers", type=int, default=0,
                        help="DataLoader worker processes of the plain loop (default: "
                             "PyTorch's, none)")
    parser.add_argument("--draws", type=int, default=0,
                        help="images per epoch (default: each variant's draws_per_epoch, where "
                             "0 is the size of the train split)")
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--compile", action="store_true",
                        help="also time the pipeline's step under torch.compile")
    parser.add_argument("--repro", metavar="ARCHIVE", help="time a full dvc repro on ARCHIVE")
    parser.add_argument("--queue", metavar="ARCHIVE",
                        help="time two queued experiments on ARCHIVE, side by side and in turn")
    parser.add_argument("--predict", action="store_true",
                        help="time loading a ResNet-50 checkpoint and classifying one image")
    parser.add_argument("--startup", nargs="*", metavar="MODULE",
                        help="time importing torch._dynamo, torchvision and each module of src/ "
                             "(or the modules named)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="also write the result to DIR/<speed|repro|queue|predict|startup>-"
                             "<device>-<precision>-torch<version>.md")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        epochs = 1 if args.quick else args.epochs or load_config().train.max_epochs
        print(json.dumps(measure(*args.one, epochs=epochs, draws=args.draws,
                                 workers=args.plain_workers)))
        return
    lines = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)
    if args.repro:
        kind = "repro"
        timed_repro(args.repro, emit)
    elif args.queue:
        kind = "queue"
        timed_queue(args.queue, emit)
    elif args.predict:
        kind = "predict"
        timed_predict(emit)
    elif args.startup is not None:
        kind = "startup"
        timed_startup(args.startup, emit)
    else:
        kind = "speed"
        speed_table(args, emit)
    if args.out:
        path = measurement_file(args.out, kind)
        write_measurement(path, "tools.bench", sys.argv[1:], "\n".join(lines))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
