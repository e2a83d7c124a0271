"""Stage `train@<variant>`: train one variant and keep its best-validation checkpoint.

    python -m src.train resnet50

Frozen layers run in eval mode once per image and augmentation view (datasets.PrefixOutputs);
the trainable head trains on those activations. Every random draw is keyed by the seed and what
is drawn (sampler.EpochSampler), so the run depends on its recipe alone. With
`train.processes` above 1 it runs under torchrun as that many processes (distributed.py).
Early stopping on validation loss, as the study; the test split is not read here. Logs every
epoch with DVCLive to dvclive/<variant>/plots/, and the chosen epoch's validation scores, with
the run's length and environment, to dvclive/<variant>/metrics.json.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from dvclive import Live

from src.lib.checkpoint import save_checkpoint, torch_load, torch_save
from src.lib.config import load_config
from src.lib.data import IMAGES_FILE, load_split
from src.lib.device import (
    autocast_dtype, environment, pick_device, seed_everything, set_deterministic, set_threads
)
from src.lib.distributed import Processes, from_main, join, launch, leave, under_torchrun
from src.lib.engine import (
    EarlyStopping, TrainingSetup, epoch_sampler, split_data, train_one_epoch, training_setup,
    validate
)
from src.lib.errors import UserError, command
from src.lib.io import code_files, file_digest
from src.lib.models import build_model, count_parameters
from src.lib.paths import LIVE_DIR, MODELS_DIR, PREPARED_DIR, RESUME_DIR
from src.lib.sampler import EpochSampler


@dataclass
class Progress:
    """Where a training run stands after its last completed epoch."""
    stopper: EarlyStopping
    epoch: int = 0
    history: list = field(default_factory=list)  # what was logged each epoch
    best: dict = field(default_factory=dict)     # validation scores of the best epoch
    best_weights: dict | None = None
    seconds: float = 0.0

    def record(self, epoch: int, logged: dict, val_scores: dict, model, seconds: float,
               keep_weights: bool = True) -> None:
        """After an epoch: keep its weights if its validation loss is the best so far."""
        if self.stopper.improved(val_scores["loss"], epoch):
            self.best = {f"val_{k}": v for k, v in val_scores.items()}
            if keep_weights:
                self.best_weights = {k: v.detach().cpu().clone()
                                     for k, v in model.state_dict().items()}
        self.epoch, self.history, self.seconds = epoch, self.history + [logged], seconds


class Resume:
    """The whole training state, saved after every epoch outside DVC's outputs (which DVC deletes
    before rerunning a stage). A rerun continues from it while `key` is unchanged. It holds no
    random generator's state, on the CPU or a GPU: every draw of an epoch comes from its own
    seed (sampler.EpochSampler), so a resumed run draws what the uninterrupted one would have.
    Every process of a run reads it; the main one writes it."""

    def __init__(self, name: str, key: str):
        self.name, self.key, self.path = name, key, RESUME_DIR / f"{name}.pt"

    def load(self, setup: TrainingSetup, model) -> Progress | None:
        if not self.path.exists():
            return None
        saved = torch_load(self.path)
        if saved["key"] != self.key:
            print(f"{self.name}: settings, data or code changed since the interrupted run; "
                  "starting afresh")
            return None
        model.load_state_dict(saved["model"])
        setup.optimizer.load_state_dict(saved["optimizer"])
        setup.scaler.load_state_dict(saved["scaler"])
        print(f"{self.name}: resuming after epoch {saved['epoch']} of an interrupted run")
        return Progress(stopper=EarlyStopping(**saved["stopper"]), epoch=saved["epoch"],
                        history=saved["history"], best=saved["best"],
                        best_weights=saved["best_weights"], seconds=saved["seconds"])

    def save(self, progress: Progress, setup: TrainingSetup, model) -> None:
        torch_save(self.path, {
            "key": self.key, "epoch": progress.epoch, "history": progress.history,
            "best": progress.best, "best_weights": progress.best_weights,
            "seconds": progress.seconds, "stopper": asdict(progress.stopper),
            "model": model.state_dict(), "optimizer": setup.optimizer.state_dict(),
            "scaler": setup.scaler.state_dict()})

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def run_key(variant) -> str:
    """Identifies a training run: the variant's settings, the prepared data and the code the
    stage runs. A saved state is resumed only under the same key. The images file is known by
    its size and time (hashing it would read gigabytes at scale): a new `prepare` restarts."""
    h = hashlib.sha256(json.dumps(asdict(variant), sort_keys=True).encode())
    for path in [PREPARED_DIR / "train.json", PREPARED_DIR / "valid.json",
                 *code_files("src.train")]:
        h.update(file_digest(path).encode())
    images = (PREPARED_DIR / IMAGES_FILE).stat()
    h.update(f"{images.st_size} {images.st_mtime_ns}".encode())
    return h.hexdigest()


def log_epoch(live: Live, logged: dict) -> None:
    for k, v in logged.items():
        live.log_metric(k, v)
    live.next_step()


def run_epoch(setup: TrainingSetup, valid_data, valid_labels, sampler: EpochSampler, *,
              variant, device, dtype, procs: Processes) -> tuple[dict, dict]:
    """Train on the sampler's epoch, then validate on the main process: (what DVCLive logs, the
    validation scores), the same on every process."""
    t, name, epoch = variant.train, variant.name, sampler.epoch
    train_scores = train_one_epoch(setup, sampler, device=device, dtype=dtype,
                                   desc=f"{name} epoch {epoch}", procs=procs)
    val_scores = from_main(validate(setup.head, valid_data, valid_labels, arch=variant.arch,
                                    batch_size=t.batch_size, device=device, dtype=dtype)
                           if procs.main else None, procs)
    if math.isnan(val_scores["loss"]) or math.isnan(train_scores["loss"]):
        raise UserError(f"train@{name}: the loss became NaN in epoch {epoch}; lower "
                        f"variants.{name}.lr (now {t.lr})")
    if procs.main:
        print(f"{name} epoch {epoch}: train loss {train_scores['loss']:.4f} "
              f"acc {train_scores['acc']:.3f} | val loss {val_scores['loss']:.4f} "
              f"acc {val_scores['acc']:.3f} f1 {val_scores['f1_macro']:.3f}", flush=True)
    logged = {f"train/{k}": v for k, v in train_scores.items()}
    return logged | {f"val/{k}": v for k, v in val_scores.items()}, val_scores


def train_variant(name: str) -> dict:
    cfg = load_config()
    variant = cfg.variant(name)
    t = variant.train
    set_deterministic(t.deterministic)
    seed_everything(t.seed)  # the initial weights; training's draws are keyed (EpochSampler)
    procs, device = join(pick_device(t.device))
    threads = set_threads()
    dtype = autocast_dtype(t.precision, device)
    train, valid = load_split("train"), load_split("valid")
    model = build_model(variant, len(train["classes"])).to(device,
                                                           memory_format=torch.channels_last)
    trainable, total = count_parameters(model)
    run_env = environment(device, dtype) | {"processes": procs.count, "threads": threads}
    if procs.main:
        print(f"{name}: {variant.arch}, trains {variant.trainable} ({trainable:,} of {total:,} "
              f"parameters) on {procs.count} x {run_env['device']} in {run_env['precision']}")

    started = time.perf_counter()
    setup = training_setup(model, variant, train, device=device, dtype=dtype, procs=procs)
    valid_data = split_data(valid["images"], variant, prefix=setup.prefix, augment=None,
                            budget=setup.budget, device=device, dtype=dtype) \
        if procs.main else None
    sampler = epoch_sampler(variant, train, procs=procs)
    resume = Resume(name, run_key(variant))
    progress = resume.load(setup, model) or Progress(
        EarlyStopping(t.patience, t.min_delta))
    started -= progress.seconds

    live = Live(str(LIVE_DIR / name), dvcyaml=False, save_dvc_exp=False) if procs.main else None
    with live or contextlib.nullcontext():
        for logged in progress.history if live else ():  # the resumed epochs, into a fresh Live
            log_epoch(live, logged)
        for epoch in range(progress.epoch + 1, t.max_epochs + 1):
            if progress.stopper.should_stop(epoch - 1):
                if procs.main:
                    print(f"{name}: early stop, no validation loss {t.min_delta} below the "
                          f"best for {t.patience} epochs")
                break
            sampler.set_epoch(epoch)
            logged, val_scores = run_epoch(setup, valid_data, valid["labels"], sampler,
                                           variant=variant, device=device, dtype=dtype,
                                           procs=procs)
            progress.record(epoch, logged, val_scores, model, time.perf_counter() - started,
                            keep_weights=procs.main)
            if live:
                log_epoch(live, logged)
                resume.save(progress, setup, model)
        summary = {"epochs": progress.epoch, "best_epoch": progress.stopper.best_epoch,
                   "train_seconds": round(time.perf_counter() - started, 1),
                   "trainable_params": trainable, "total_params": total,
                   "best": progress.best, **run_env}
        if live:
            live.summary.update(summary)
    if not progress.best:  # only an infinite loss never improves on the first
        losses = ", ".join(f"{h['val/loss']:g}" for h in progress.history)
        raise UserError(f"train@{name}: no epoch gave a finite validation loss ({losses}); "
                        f"lower variants.{name}.lr (now {t.lr}) or set "
                        f"variants.{name}.precision=fp32")
    if procs.main:
        save_checkpoint(MODELS_DIR / name / "model.pt", variant, progress.best_weights, train)
        resume.finish()
    leave(procs)
    return summary


@command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    name = parser.parse_args().variant
    processes = load_config().variant(name).train.processes
    if processes > 1 and not under_torchrun():
        return launch("src.train", [name], processes)
    summary = train_variant(name)
    if under_torchrun() and int(os.environ["RANK"]):
        return
    print(f"best epoch {summary['best_epoch']} of {summary['epochs']}, "
          f"val macro F1 {summary['best']['val_f1_macro']:.3f}, {summary['train_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
