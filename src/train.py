"""Stage `train@<variant>`: train one variant and keep its best-validation checkpoint.

    python -m src.train resnet50

Frozen layers run in eval mode once per image and augmentation view (see engine.Batches); the
trainable head trains on those activations. Early stopping on validation loss; the test split is
not read here. Logs every epoch with DVCLive to dvclive/<variant>/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, astuple
from pathlib import Path

import torch
from dvclive import Live
from torch import nn

from src.config import CLASSES, load_config
from src.data import PREPARED_DIR, file_digest, load_split
from src.engine import Batches, EarlyStopping, draw_order, grad_scaler, train_one_epoch, \
    validate
from src.models import MODELS_DIR, build_model, count_parameters, split_frozen
from src.transforms import NORMALIZATION, preset
from src.utils import StageError, autocast_dtype, pick_device, seed_everything, stage_main, \
    torch_load, torch_save, write_json

LIVE_DIR = Path("dvclive")
RESUME_DIR = Path(".resume")  # interrupted runs; not a DVC output, ignored by Git


def checkpoint(variant, state_dict: dict, prepared_size: int) -> dict:
    """Everything needed to use the model: weights, labels and preprocessing (letterbox to
    `prepared_size`, resize to `image_size`, normalize), in one file that
    torch.load(weights_only=True) reads."""
    return {"state_dict": state_dict, "variant": variant.name, "arch": variant.arch,
            "trainable": variant.trainable, "image_size": variant.image_size,
            "prepared_size": prepared_size, "framing": variant.train.framing,
            "intensity": variant.train.intensity, "classes": list(CLASSES),
            **NORMALIZATION[variant.arch]}


def run_key(variant, files: list[Path]) -> str:
    """Identifies a training run: the variant's settings, the prepared data and the code. A saved
    state is resumed only under the same key."""
    h = hashlib.sha256(json.dumps(asdict(variant), sort_keys=True).encode())
    for path in files + sorted(Path("src").glob("*.py")):
        h.update(file_digest(path).encode())
    return h.hexdigest()


def train_variant(name: str) -> dict:
    cfg = load_config()
    variant = cfg.variant(name)
    t = variant.train
    seed_everything(t.seed)
    device = pick_device(t.device)
    dtype = autocast_dtype(t.precision, device)
    model = build_model(variant).to(device, memory_format=torch.channels_last)
    trainable, total = count_parameters(model)
    prefix, head = split_frozen(model, variant)
    print(f"{name}: {variant.arch}, trains {variant.trainable} ({trainable:,} of {total:,} "
          f"parameters) on {device}{' with ' + str(dtype).split('.')[-1] if dtype else ''}")

    train, valid = load_split("train"), load_split("valid")
    generator = torch.Generator().manual_seed(t.seed)
    started = time.perf_counter()
    train_batches = Batches(preset(train["images"], variant), train["labels"], variant.arch,
                            device, dtype, prefix, t.augment_views, t.augment, generator,
                            t.batch_size, "train")
    valid_batches = Batches(preset(valid["images"], variant), valid["labels"], variant.arch,
                            device, dtype, prefix, 1, None, generator, t.batch_size, "valid")
    criterion = nn.CrossEntropyLoss(weight=train["class_weights"].to(device))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                 weight_decay=t.weight_decay)
    scaler = grad_scaler(device, dtype)
    draws = t.draws_per_epoch or len(train["labels"])

    # Resumable: after every epoch the whole training state is saved outside DVC's outputs
    # (which DVC deletes before rerunning a stage); a rerun with the same key continues from it.
    resume_path = RESUME_DIR / f"{name}.pt"
    key = run_key(variant, [PREPARED_DIR / "train.pt", PREPARED_DIR / "valid.pt"])
    stopper = EarlyStopping(t.patience, t.min_delta)
    state = {"key": key, "epoch": 0, "history": [], "best": {}, "best_state": None,
             "seconds": 0.0, "stopper": astuple(stopper)}
    if resume_path.exists():
        saved = torch_load(resume_path)
        if saved["key"] == key:
            state = saved
            stopper = EarlyStopping(*saved["stopper"])
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            print(f"{name}: resuming after epoch {saved['epoch']} of an interrupted run")
        else:
            print(f"{name}: settings, data or code changed since the interrupted run; "
                  "starting afresh")
    started -= state["seconds"]

    with Live(str(LIVE_DIR / name), dvcyaml=False, save_dvc_exp=False) as live:
        for logged in state["history"]:  # the resumed epochs, logged again into a fresh Live
            for k, v in logged.items():
                live.log_metric(k, v)
            live.next_step()
        best = state["best"]
        for epoch in range(state["epoch"] + 1, t.max_epochs + 1):
            if stopper.should_stop(epoch - 1):
                print(f"{name}: early stop, no validation loss {t.min_delta} below the best "
                      f"for {t.patience} epochs")
                break
            order = draw_order(train["sample_weights"], draws, generator)
            train_scores = train_one_epoch(head, train_batches, order, t.batch_size, optimizer,
                                           scaler, criterion, device, dtype,
                                           f"{name} epoch {epoch}/{t.max_epochs}")
            val_scores = validate(head, valid_batches, t.batch_size, device, dtype)
            if math.isnan(val_scores["loss"]) or math.isnan(train_scores["loss"]):
                raise StageError(f"train@{name}: the loss became NaN in epoch {epoch}; lower "
                                 f"variants.{name}.lr (now {t.lr})")
            logged = {f"{split}/{k}": v for split, s in (("train", train_scores),
                                                          ("val", val_scores)) for k, v in s.items()}
            for k, v in logged.items():
                live.log_metric(k, v)
            live.next_step()
            print(f"{name} epoch {epoch}: train loss {train_scores['loss']:.4f} "
                  f"acc {train_scores['acc']:.3f} | val loss {val_scores['loss']:.4f} "
                  f"acc {val_scores['acc']:.3f} f1 {val_scores['f1_macro']:.3f}", flush=True)
            if stopper.improved(val_scores["loss"], epoch):
                best = {f"val_{k}": v for k, v in val_scores.items()} | {"epoch": epoch}
                state["best_state"] = {k: v.detach().cpu().clone()
                                       for k, v in model.state_dict().items()}
            state |= {"epoch": epoch, "history": state["history"] + [logged], "best": best,
                      "seconds": time.perf_counter() - started, "stopper": astuple(stopper)}
            torch_save(resume_path, state | {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state()})
        summary = {"epochs": state["epoch"], "best_epoch": best["epoch"],
                   "train_seconds": round(time.perf_counter() - started, 1),
                   "trainable_params": trainable, "total_params": total,
                   "best": {k: v for k, v in best.items() if k != "epoch"}}
        live.summary.update(summary)
    torch_save(MODELS_DIR / name / "model.pt",
               checkpoint(variant, state["best_state"], train["images"].shape[-1]))
    write_json(MODELS_DIR / name / "summary.json", summary)
    resume_path.unlink()
    return summary


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    summary = train_variant(parser.parse_args().variant)
    print(f"best epoch {summary['best_epoch']} of {summary['epochs']}, "
          f"val macro F1 {summary['best']['val_f1_macro']:.3f}, {summary['train_seconds']} s")


if __name__ == "__main__":
    main()
