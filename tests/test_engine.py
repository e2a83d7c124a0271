import math

import pytest
import torch
from torch import nn

from dataclasses import replace

from src.lib.config import parse_config
from src.lib.device import grad_scaler
from src.lib.engine import (Batches, Budget, RowCache, TrainingSetup, epoch_draws, slot_draws,
                             train_one_epoch, validate)
from src.lib.transforms import model_input
from tests.conftest import prepared_images, shipped_params

CPU = torch.device("cpu")


def variant(name="resnet50_fc", size=8, **train):
    v = parse_config(shipped_params()).variant(name)
    return replace(v, image_size=size, train=replace(v.train, **train))


def tiny_loss(logits, targets):
    # Gradients this small flush to zero in float16: what loss scaling is for.
    return 1e-8 * nn.functional.cross_entropy(logits, targets)


def one_epoch(scaler, folder) -> float:
    """How far one float16-autocast epoch moves a linear classifier's weights."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    before = head[1].weight.detach().clone()
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    batches = Batches(prepared_images(images, folder), torch.arange(16) % 4, variant(),
                      device=CPU, dtype=torch.float16, budget=Budget(1))
    setup = TrainingSetup(head=head, prefix=None, batches=batches,
                          optimizer=torch.optim.SGD(head.parameters(), lr=1.0),
                          criterion=tiny_loss, scaler=scaler, budget=Budget(0))
    draws = epoch_draws(0, 1, torch.ones(16), 16, views=1)
    scores = train_one_epoch(setup, draws, 8, device=CPU, dtype=torch.float16, desc="test")
    assert math.isfinite(scores["loss"])
    return (head[1].weight.detach() - before).abs().max().item()


def test_float16_autocast_scales_the_loss_so_small_gradients_still_train(tmp_path):
    assert one_epoch(torch.amp.GradScaler("cpu", enabled=False), tmp_path / "a") == 0  # flushed
    assert grad_scaler(CPU, torch.float16).is_enabled()
    assert one_epoch(grad_scaler(CPU, torch.float16), tmp_path / "b") > 0


def test_validation_loss_grows_with_how_confidently_wrong_the_head_is(tmp_path):
    # Logits 100 apart: the wrong answers' probabilities round to zero in float32, so a loss
    # from probabilities would be capped (and equal for both heads below); from logits it is not.
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    batches = Batches(prepared_images(images, tmp_path), labels, variant(), device=CPU,
                      dtype=None, budget=Budget(1))

    def loss_when_always_class_0(margin: float) -> float:
        head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        nn.init.zeros_(head[1].weight)
        with torch.no_grad():
            head[1].bias.copy_(torch.tensor([margin, 0.0, 0.0, 0.0]))
        scores = validate(head, batches, batch_size=3, device=CPU, dtype=None)
        assert scores["acc"] == 0.25  # the two images of class 0
        return scores["loss"]

    # 6 of 8 wrong by 100 logits: 0.75 x 100 = 75; a loss capped at 27.63 would give 20.72
    assert loss_when_always_class_0(100.0) == pytest.approx(75.0)
    assert loss_when_always_class_0(200.0) > loss_when_always_class_0(100.0) + 70


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_bfloat16_and_float32_need_no_loss_scaling(dtype):
    assert not grad_scaler(CPU, dtype).is_enabled()


def test_early_stopping_counts_only_drops_of_at_least_min_delta():
    from src.lib.engine import EarlyStopping
    stopper = EarlyStopping(patience=2, min_delta=0.001)
    assert stopper.improved(1.0, epoch=1)
    assert not stopper.improved(0.9995, epoch=2)  # lower, but by less than min_delta
    assert not stopper.should_stop(2)
    assert not stopper.improved(0.9990, epoch=3)  # exactly min_delta below is not enough
    assert stopper.should_stop(3) and stopper.best_epoch == 1
    assert stopper.improved(0.5, epoch=4) and not stopper.should_stop(5)


class Counted:
    """A compute function that records which rows it was asked for."""

    def __init__(self, fn):
        self.fn, self.asked = fn, []

    def __call__(self, idx):
        self.asked += idx.tolist()
        return self.fn(idx)


@pytest.mark.parametrize("megabytes", [1, 0], ids=["in memory", "on disk"])
def test_row_cache_computes_each_row_once_when_first_drawn(megabytes):
    compute = Counted(lambda idx: idx.to(torch.bfloat16)[:, None].expand(-1, 5) / 7)
    cache = RowCache(100, (5,), torch.bfloat16, compute=compute, budget=Budget(megabytes),
                     device=CPU)
    assert cache.in_memory == bool(megabytes)
    first = cache.get(torch.tensor([3, 9, 3]))
    second = cache.get(torch.tensor([9, 4]))
    assert sorted(compute.asked) == [3, 4, 9]  # row 9 was kept, not computed again
    assert torch.equal(first[1], second[0]) and first.dtype == torch.bfloat16
    assert torch.equal(second[1], compute.fn(torch.tensor([4]))[0])


def prefix_batches(folder, megabytes: int) -> tuple[Batches, Counted]:
    """Training batches of a frozen linear prefix over 12 random 8x8 images, 3 views."""
    torch.manual_seed(0)
    images = prepared_images(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8), folder)
    prefix = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
    batches = Batches(images, torch.arange(12) % 4, variant(augment_views=3, batch_size=4),
                      device=CPU, dtype=None, budget=Budget(megabytes), prefix=prefix, train=True)
    batches.features.compute = Counted(batches.features.compute)
    return batches, batches.features.compute


@pytest.mark.parametrize("megabytes", [1, 0], ids=["in memory", "on disk"])
def test_prefix_outputs_are_computed_when_first_drawn(tmp_path, megabytes):
    batches, compute = prefix_batches(tmp_path, megabytes)
    assert not batches.features.done.any()
    (features,) = batches.get(torch.tensor([5, 7]), view=torch.tensor([2, 0]))
    assert sorted(compute.asked) == [7, 2 * 12 + 5]  # slot = view x 12 + image
    # each is the prefix's output for its image's view, augmented by its own seeded draws
    image = batches.frames.get(torch.tensor([5]))
    expected = batches.prefix(model_input(image, "resnet50", draws=slot_draws(
        batches.seed, torch.tensor([5]), torch.tensor([2]))))
    assert torch.allclose(features[0].flatten(), expected.flatten(), atol=1e-6)


def test_outputs_computed_when_drawn_do_not_depend_on_the_order_of_draws(tmp_path):
    a, _ = prefix_batches(tmp_path / "a", megabytes=0)
    b, _ = prefix_batches(tmp_path / "b", megabytes=1)
    slots = torch.tensor([0, 13, 35, 7])
    assert torch.equal(a.features.get(slots), b.features.get(slots.flip(0)).flip(0))


def test_an_epochs_draws_depend_on_the_seed_and_the_epoch_alone():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    second = epoch_draws(7, 2, weights, 50, views=8)
    again = epoch_draws(7, 2, weights, 50, views=8)
    assert all(torch.equal(getattr(second, k), getattr(again, k))
               for k in ("order", "view", "augment"))
    assert not torch.equal(epoch_draws(7, 1, weights, 50, views=8).order, second.order)
    assert not torch.equal(epoch_draws(8, 2, weights, 50, views=8).order, second.order)
