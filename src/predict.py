"""Classify CT slices with the released model.

    python -m src.predict IMAGE [IMAGE ...] [--model release/model.pt] [--json] [--cam DIR]

Any size and mode of PNG or JPEG, letterboxed exactly as in training. A file that cannot be read
gets one line on stderr and the others are still classified; the exit status is 0 only if all
succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from src import plots
from src.data import decode_rgb, letterbox
from src.explain import cam_layer, grad_cam
from src.models import load_checkpoint
from src.transforms import frame, normalize
from src.utils import StageError

DEFAULT_MODEL = Path("release/model.pt")


def load_image(path: Path, ckpt: dict) -> torch.Tensor:
    """uint8 [1, 3, S, S]: the letterbox of `prepare`, then the variant's framing and size."""
    if not path.is_file():
        raise ValueError("no such file")
    square = torch.from_numpy(letterbox(decode_rgb(path), ckpt["prepared_size"]))
    return frame(square.permute(2, 0, 1).contiguous(), ckpt["framing"], ckpt["intensity"],
                 ckpt["image_size"])[None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="a checkpoint from `release` or `train` (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--cam", type=Path, metavar="DIR", help="write Grad-CAM overlays here")
    args = parser.parse_args(argv)
    try:
        model, ckpt = load_checkpoint(args.model)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes, arch = ckpt["classes"], ckpt["arch"]
    results, failed = [], 0
    for path in args.images:
        try:
            image = load_image(path, ckpt)
        except Exception as e:  # unreadable, truncated, not an image: say so, go on
            print(f"error: {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=sys.stderr)
            results.append({"file": str(path), "error": str(e)})
            failed += 1
            continue
        x = normalize(image.float() / 255, arch)
        if args.cam:
            heatmap, probabilities = grad_cam(model, cam_layer(model, arch), x)
            label = classes[int(probabilities.argmax())]
            plots.cam_overlay(image[0], heatmap[0], f"{path.name}: {label} "
                              f"{probabilities.max():.2f}", args.cam / f"{path.stem}.png")
        else:
            with torch.no_grad():
                probabilities = torch.softmax(model(x).float(), 1)
        results.append({"file": str(path), "predicted": classes[int(probabilities[0].argmax())],
                        "probabilities": dict(zip(classes, (round(v, 4) for v in
                                                            probabilities[0].tolist())))})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\t".join(["file", *classes, "predicted"]))
        for r in results:
            if "error" not in r:
                print("\t".join([r["file"], *(f"{v:.3f}" for v in r["probabilities"].values()),
                                 r["predicted"]]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
