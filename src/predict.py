"""Classify CT slices with the released model (or any checkpoint of this project).

    python -m src.predict IMAGE [IMAGE ...] [--model release/model.pt] [--json] [--cam DIR]

Any size and mode of PNG or JPEG, decoded, letterboxed and framed exactly as in training, and
classified by the same code as `evaluate` (src/lib/inference.py), so that on the same device
it gives the probabilities `evaluate` scored. A file that cannot be read
gets one line on stderr and the others are still classified; the exit status is 0 only if all
succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from src.lib import plots
from src.lib.errors import command
from src.lib.inference import classify, load_classifier, read_image
from src.lib.paths import RELEASE_DIR


def read_images(clf, paths: list[Path]) -> tuple[dict[Path, torch.Tensor], dict[Path, str]]:
    """The framed images, and for each file that failed, why."""
    images, errors = {}, {}
    for path in paths:
        try:
            images[path] = read_image(clf, path)
        except Exception as e:  # unreadable, truncated, not an image: say so, go on
            errors[path] = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"error: {path}: {errors[path]}", file=sys.stderr)
    return images, errors


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, default=RELEASE_DIR / "model.pt",
                        help="a checkpoint from `release` or `train` (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--cam", type=Path, metavar="DIR", help="write Grad-CAM overlays here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="as train.device (default: %(default)s)")
    args = parser.parse_args(argv)
    clf = load_classifier(args.model, args.device)
    classes = clf.settings["classes"]
    images, errors = read_images(clf, args.images)
    batch = torch.stack(list(images.values())) if images else torch.zeros(0, 3, 1, 1)
    logits, heatmaps = classify(clf, batch, cam=bool(args.cam))
    probabilities = logits.softmax(1)
    if args.cam:
        for (path, image), heatmap, p in zip(images.items(), heatmaps, probabilities):
            plots.cam_overlay(image, heatmap, f"{path.name}: {classes[int(p.argmax())]} "
                              f"{p.max():.2f}", args.cam / f"{path.stem}.png")
    scored = dict(zip(images, probabilities.tolist()))
    results = [{"file": str(path), "error": errors[path]} if path in errors else
               {"file": str(path), "predicted": classes[scored[path].index(max(scored[path]))],
                "probabilities": {c: round(v, 4) for c, v in zip(classes, scored[path])}}
               for path in args.images]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\t".join(["file", *classes, "predicted"]))
        for r in results:
            if "error" not in r:
                print("\t".join([r["file"], *(f"{v:.3f}" for v in r["probabilities"].values()),
                                 r["predicted"]]))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
