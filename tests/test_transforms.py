import numpy as np
import pytest
import torch
from scipy import ndimage

from src.lib.transforms import BODY_THRESHOLD, augment, body_mask, frame


def slice_with_table_and_label(size=96) -> torch.Tensor:
    """A letterboxed CT-like slice: a gray body (an ellipse, gray 60 to 120, with dark lungs),
    left of centre and short of the frame; a bright scanner-table line under it; a white label."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size), np.float32)
    body = ((xx - 40) / 30) ** 2 + ((yy - 45) / 20) ** 2 <= 1
    image[body] = 60 + 60 * (xx[body] - 10) / 60
    lungs = ((xx - 40) / 10) ** 2 + ((yy - 45) / 8) ** 2 <= 1
    image[lungs] = 5
    image[72:74, 5:80] = 200  # the table, below the body with a gap
    image[5:9, 85:92] = 255  # a text label in the corner
    return torch.from_numpy(image).round().to(torch.uint8).expand(3, size, size).clone()


def test_body_mask_is_the_body_with_lungs_but_not_table_or_label():
    image = slice_with_table_and_label()
    mask = body_mask(image[0].numpy())
    assert mask[45, 40]  # the lungs are inside the body
    assert not mask[73, 40] and not mask[7, 88]
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == pytest.approx((25, 65, 10, 70),
                                                                            abs=2)


def scipy_body_mask(gray: np.ndarray) -> np.ndarray:
    """body_mask as scipy's morphology says it: the definition the fast version must match."""
    bright = ndimage.binary_opening(gray > BODY_THRESHOLD, iterations=2)
    regions, count = ndimage.label(bright)
    if count == 0:
        return np.ones_like(bright)
    sizes = ndimage.sum(bright, regions, range(1, count + 1))
    return ndimage.binary_fill_holes(regions == 1 + int(np.argmax(sizes)))


def test_body_mask_equals_scipys_opening_label_and_fill_holes():
    rng = np.random.default_rng(0)
    slices = [slice_with_table_and_label()[0].numpy(), np.zeros((40, 40), np.uint8),
              np.full((40, 40), 200, np.uint8)]
    for _ in range(40):  # blobs with holes, touching the border or not, and noise
        gray = ndimage.gaussian_filter(rng.normal(25, 40, (80, 100)), rng.uniform(1, 4))
        slices.append(np.clip(gray, 0, 255).astype(np.uint8))
    for gray in slices:
        assert np.array_equal(body_mask(gray), scipy_body_mask(gray))


def test_body_framing_fills_the_square_and_window_stretches_gray_levels():
    image = slice_with_table_and_label()
    assert torch.equal(frame(image, "letterbox", "as_is", 96), image)

    framed = frame(image, "body", "as_is", 96)
    assert framed.shape == image.shape and framed.dtype == torch.uint8
    gray = framed[0].float()
    # the body now touches all four sides; the table and the label are cropped away
    assert gray[0].max() > 30 and gray[-1].max() > 30
    assert gray[:, 0].max() > 30 and gray[:, -1].max() > 30
    assert gray.max() < 130
    masked = frame(image, "body_masked", "as_is", 96)[0].float()
    assert masked[48, 48] == gray[48, 48] and (masked <= gray + 1).all()  # the same crop
    assert masked[0, 0] == masked[-1, -1] == 0 and masked.mean() < gray.mean()  # corners blanked

    windowed = frame(image, "letterbox", "window", 96)
    body = torch.from_numpy(body_mask(image[0].numpy()))
    levels = windowed[0][body].float()
    assert levels.max() == 255 and levels.min() == 0  # lungs (5) to tissue (120) -> 0 to 255
    assert windowed[0, 45, 40] == 0 and windowed[0, 73, 40] == 255  # the table clips
    assert torch.equal(windowed[0], windowed[1])  # one map for every channel


def test_augment_is_seeded_and_stays_in_range():
    x = slice_with_table_and_label()[None].float().repeat(4, 1, 1, 1) / 255
    for strength in ("study", "strong"):
        a = augment(x, torch.Generator().manual_seed(0), strength)
        b = augment(x, torch.Generator().manual_seed(0), strength)
        assert torch.equal(a, b) and a.shape == x.shape
        assert 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a[0], a[1])  # every image gets its own draw
