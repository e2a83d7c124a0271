"""Classify CT slices with the released model (or any checkpoint of this project).

    python -m src.predict IMAGE [IMAGE ...] [--model release/model.pt] [--json] [--cam DIR]
                          [--raw] [--any-modality]

Any size and mode of PNG, JPEG or DICOM, decoded, letterboxed and framed exactly as in training,
and classified by the same code as `evaluate` (src/lib/inference.py), so that on the same device
it gives the probabilities `evaluate` scored: calibrated by the temperature the released model
carries (`--raw`: the plain softmax). Every input also gets its energy, and is flagged as unlike
the training data when that is above the threshold set on validation. A DICOM whose Modality is
not CT is refused (`--any-modality` classifies it anyway). A file that cannot be used gets one
line on stderr and the others are still classified; the exit status is 0 only if all succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from src.lib import plots
from src.lib.dicom import modality
from src.lib.errors import command
from src.lib.inference import calibrated, classify, energy, load_classifier, read_image
from src.lib.paths import RELEASE_DIR


def read_images(clf, paths: list[Path], any_modality: bool
                ) -> tuple[dict[Path, torch.Tensor], dict[Path, str]]:
    """The framed images, and for each file that failed, why."""
    images, errors = {}, {}
    for path in paths:
        try:
            kind = modality(path) if path.suffix.lower() == ".dcm" else None
            if kind not in (None, "CT") and not any_modality:
                raise ValueError(f"a {kind} image, not CT: the model was trained on CT slices "
                                 "(--any-modality classifies it anyway)")
            images[path] = read_image(clf, path)
        except Exception as e:  # unreadable, truncated, not an image: say so, go on
            errors[path] = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"error: {path}: {errors[path]}", file=sys.stderr)
    return images, errors


def results(clf, paths: list[Path], images: dict, errors: dict, logits: torch.Tensor,
            raw: bool) -> list[dict]:
    """One record per input, in the order given: its probabilities, prediction, energy and
    whether that flags it (None where the checkpoint has no threshold), or its error."""
    classes, threshold = clf.settings["classes"], clf.settings.get("energy_threshold")
    scored = dict(zip(images, zip(calibrated(clf, logits, raw).tolist(),
                                  energy(logits).tolist())))
    out = []
    for path in paths:
        if path in errors:
            out.append({"file": str(path), "error": errors[path]})
            continue
        probabilities, score = scored[path]
        out.append({"file": str(path),
                    "predicted": classes[probabilities.index(max(probabilities))],
                    "probabilities": {c: round(v, 4) for c, v in zip(classes, probabilities)},
                    "energy": round(score, 4),
                    "unlike_training_data": None if threshold is None else score > threshold})
    return out


def print_table(records: list[dict], classes: list[str]) -> None:
    print("\t".join(["file", *classes, "predicted", "energy", "flag"]))
    for r in records:
        if "error" not in r:
            flag = "unlike training data" if r["unlike_training_data"] else ""
            print("\t".join([r["file"], *(f"{v:.3f}" for v in r["probabilities"].values()),
                             r["predicted"], f"{r['energy']:.2f}", flag]))


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, default=RELEASE_DIR / "model.pt",
                        help="a checkpoint from `release` or `train` (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--cam", type=Path, metavar="DIR", help="write Grad-CAM overlays here")
    parser.add_argument("--raw", action="store_true",
                        help="the plain softmax, without the released temperature")
    parser.add_argument("--any-modality", action="store_true",
                        help="classify DICOM files whatever their Modality (default: CT only)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="as train.device (default: %(default)s)")
    args = parser.parse_args(argv)
    clf = load_classifier(args.model, args.device)
    classes = clf.settings["classes"]
    if clf.settings.get("temperature") is None and not args.raw:
        print(f"note: {args.model} carries no temperature (a `train` checkpoint): the "
              "probabilities are the uncalibrated softmax; release/model.pt has one",
              file=sys.stderr)
    images, errors = read_images(clf, args.images, args.any_modality)
    batch = torch.stack(list(images.values())) if images else torch.zeros(0, 3, 1, 1)
    logits, heatmaps = classify(clf, batch, cam=bool(args.cam))
    records = results(clf, args.images, images, errors, logits, args.raw)
    if args.cam:
        scored = [r for r in records if "error" not in r]
        for (path, image), heatmap, r in zip(images.items(), heatmaps, scored):
            title = f"{path.name}: {r['predicted']} {max(r['probabilities'].values()):.2f}"
            plots.cam_overlay(image, heatmap, title, args.cam / f"{path.stem}.png")
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print_table(records, classes)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
