"""Stage `train@<variant>`: train one variant and keep its best-validation checkpoint.

    python -m src.train resnet50

Frozen layers run in eval mode once per image and augmentation view (see engine.Batches); the
trainable head trains on those activations. Early stopping on validation loss; the test split is
not read here. Logs every epoch with DVCLive to dvclive/<variant>/.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from dvclive import Live
from torch import nn

from src.config import CLASSES, load_config
from src.data import load_split
from src.engine import Batches, draw_order, train_one_epoch, validate
from src.models import build_model, count_parameters, split_frozen
from src.transforms import NORMALIZATION, resize
from src.utils import autocast_dtype, pick_device, seed_everything, stage_main, torch_save, \
    write_json

MODELS_DIR = Path("models")
LIVE_DIR = Path("dvclive")


def checkpoint(model: nn.Module, variant, state_dict: dict) -> dict:
    """Everything needed to use the model: weights, labels and preprocessing, in one file that
    torch.load(weights_only=True) reads."""
    return {"state_dict": state_dict, "variant": variant.name, "arch": variant.arch,
            "trainable": variant.trainable, "image_size": variant.image_size,
            "classes": list(CLASSES), "letterbox": True, **NORMALIZATION[variant.arch]}


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
    train_batches = Batches(resize(train["images"], variant.image_size), train["labels"],
                            variant.arch, device, dtype, prefix, t.augment_views, True, generator,
                            t.batch_size, "train")
    valid_batches = Batches(resize(valid["images"], variant.image_size), valid["labels"],
                            variant.arch, device, dtype, prefix, 1, False, generator,
                            t.batch_size, "valid")
    criterion = nn.CrossEntropyLoss(weight=train["class_weights"].to(device))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                 weight_decay=t.weight_decay)
    draws = t.draws_per_epoch or len(train["labels"])

    best = {"val_loss": float("inf")}
    best_state, epochs_run = None, 0
    with Live(str(LIVE_DIR / name), dvcyaml=False, save_dvc_exp=False) as live:
        for epoch in range(1, t.max_epochs + 1):
            order = draw_order(train["sample_weights"], draws, generator)
            train_scores = train_one_epoch(head, train_batches, order, t.batch_size, optimizer,
                                           criterion, device, dtype,
                                           f"{name} epoch {epoch}/{t.max_epochs}")
            val_scores = validate(head, valid_batches, t.batch_size, device, dtype)
            epochs_run = epoch
            for split, s in (("train", train_scores), ("val", val_scores)):
                for key, value in s.items():
                    live.log_metric(f"{split}/{key}", value)
            print(f"{name} epoch {epoch}: train loss {train_scores['loss']:.4f} "
                  f"acc {train_scores['acc']:.3f} | val loss {val_scores['loss']:.4f} "
                  f"acc {val_scores['acc']:.3f} f1 {val_scores['f1_macro']:.3f}", flush=True)
            if val_scores["loss"] < best["val_loss"]:
                best = {f"val_{k}": v for k, v in val_scores.items()} | {"epoch": epoch}
                best_state = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
            elif epoch - best["epoch"] >= t.patience:
                print(f"{name}: early stop, no better validation loss for {t.patience} epochs")
                break
            live.next_step()
        summary = {"epochs": epochs_run, "best_epoch": best["epoch"],
                   "train_seconds": round(time.perf_counter() - started, 1),
                   "trainable_params": trainable, "total_params": total,
                   "best": {k: v for k, v in best.items() if k != "epoch"}}
        live.summary.update(summary)
    torch_save(MODELS_DIR / name / "model.pt", checkpoint(model, variant, best_state))
    write_json(MODELS_DIR / name / "summary.json", summary)
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
