"""Pictures: the exploratory figures of the data report, confusion matrices, the comparison chart."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from src.lib.config import SPLITS  # noqa: E402
from src.lib.io import atomic_write  # noqa: E402

if TYPE_CHECKING:  # annotations only: `compare` draws without importing torch
    import torch


def _save(fig, path: Path) -> None:
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def class_distribution(counts: dict, classes: list[str], path: Path) -> None:
    """counts[stage][split][class] -> grouped bars, one panel per split, before and after."""
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4 * len(SPLITS), 3.5), sharey=False)
    x = np.arange(len(classes))
    for ax, split in zip(axes, SPLITS):
        for i, stage in enumerate(counts):
            ax.bar(x + (i - 0.5) * 0.4, [counts[stage][split].get(c, 0) for c in classes], 0.4,
                   label=stage)
        ax.set_title(split)
        ax.set_xticks(x, [c.replace("_", "\n") for c in classes], fontsize=7)
    axes[0].set_ylabel("images")
    axes[0].legend()
    _save(fig, path)


def sample_grid(images, labels: torch.Tensor, classes: list[str], path: Path,
                per_class: int = 6) -> None:
    """The first `per_class` training images of each class; `images` indexable like a tensor."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.7 * len(classes)),
                             squeeze=False)
    for row, name in enumerate(classes):
        idx = (labels == row).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                ax.imshow(images[idx[col]].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    _save(fig, path)


def gray_histograms(images, labels: torch.Tensor, num_classes: int, bins: np.ndarray
                    ) -> np.ndarray:
    """Per class, the counts of the non-padding grayscale pixels in `bins`, read a chunk of
    images at a time (`images.chunks`), so the split's size does not matter."""
    counts = np.zeros((num_classes, len(bins) - 1))
    for start, chunk in images.chunks():
        gray = chunk.float().mean(1).flatten(1)
        for c in range(num_classes):
            values = gray[labels[start:start + len(chunk)] == c].flatten()
            # equal-width bins given as a count and range take numpy's fast path
            counts[c] += np.histogram(values[values > 0].numpy(), bins=len(bins) - 1,
                                      range=(bins[0], bins[-1]))[0]
    return counts


def intensity_histograms(splits: dict, classes: list[str], path: Path) -> None:
    """Grayscale histogram of the non-padding pixels per class, one line per split: the test
    split's carcinomas are darker than train's and valid's."""
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3), sharey=True,
                             squeeze=False)
    bins = np.linspace(1, 255, 65)
    for split, data in splits.items():
        counts = gray_histograms(data["images"], data["labels"], len(classes), bins)
        for ax, class_counts in zip(axes[0], counts):
            if class_counts.sum():
                ax.stairs(class_counts / class_counts.sum() / np.diff(bins), bins, label=split)
    for ax, name in zip(axes[0], classes):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("pixel value")
    axes[0, 0].legend()
    _save(fig, path)


def image_row(images: torch.Tensor, titles: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2.2))
    for ax, image, title in zip(axes, images, titles):
        ax.imshow(image.permute(1, 2, 0).numpy(), cmap="gray")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    _save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    short = [c.replace("_carcinoma", "").replace("_", " ") for c in classes]
    ax.set_xticks(range(len(classes)), short, rotation=30)
    ax.set_yticks(range(len(classes)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def comparison_chart(rows: list[dict], path: Path) -> None:
    """Test weighted F1 per variant: ours beside the study's, the floor as a line."""
    names = [r["variant"] for r in rows if r["variant"] != "floor"]
    ours = [r["test_f1_weighted"] for r in rows if r["variant"] != "floor"]
    study = [r.get("study_f1_weighted") or 0 for r in rows if r["variant"] != "floor"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, ours, 0.4, label="this pipeline")
    ax.bar(x + 0.2, study, 0.4, label="study (reported)")
    for r in rows:
        if r["variant"] == "floor":
            ax.axhline(r["test_f1_weighted"], color="gray", linestyle="--",
                       label="floor: logistic regression")
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("test weighted F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    _save(fig, path)


def cam_overlay(image: torch.Tensor, heatmap: torch.Tensor, title: str, path: Path) -> None:
    """An image [3, H, W] uint8 with its Grad-CAM heatmap [H, W] over it."""
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(image.permute(1, 2, 0).numpy())
    ax.imshow(heatmap.numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    _save(fig, path)


def reliability_diagram(before: dict, after: dict, *, temperature: float, title: str,
                        path: Path) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for result, label in ((before, "raw"), (after, f"T={temperature:.3g}")):
        bins = result["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{label}: ECE {result['ece']:.3f}")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def cam_grid(images: torch.Tensor, heatmaps: torch.Tensor, titles: list[str], path: Path) -> None:
    """Grad-CAM overlays, four to a row, each titled with its true and predicted labels."""
    cols = 4
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, heatmap, title in zip(axes.flat, images, heatmaps, titles):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow(heatmap.numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    _save(fig, path)
