import math

import pytest
import torch
from torch import nn

from dataclasses import replace

from src.lib.config import parse_config
from src.lib.device import grad_scaler
from src.lib.datasets import Budget, FramedImages, PrefixOutputs, RowCache, view_draws
from src.lib.engine import TrainingSetup, train_one_epoch, validate
from src.lib.sampler import EpochSampler
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
    data = FramedImages(prepared_images(images, folder), variant(), budget=Budget(1), device=CPU)
    setup = TrainingSetup(head=head, prefix=None, data=data, labels=torch.arange(16) % 4,
                          arch="resnet50", augment="study",
                          optimizer=torch.optim.SGD(head.parameters(), lr=1.0),
                          criterion=tiny_loss, scaler=scaler, budget=Budget(0))
    sampler = EpochSampler(torch.ones(16), torch.ones(16), seed=0, draws=16, views=1,
                           batch_size=8)
    sampler.set_epoch(1)
    scores = train_one_epoch(setup, sampler, device=CPU, dtype=torch.float16, desc="test")
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
    data = FramedImages(prepared_images(images, tmp_path), variant(), budget=Budget(1),
                        device=CPU)

    def loss_when_always_class_0(margin: float) -> float:
        head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        nn.init.zeros_(head[1].weight)
        with torch.no_grad():
            head[1].bias.copy_(torch.tensor([margin, 0.0, 0.0, 0.0]))
        scores = validate(head, data, labels, arch="resnet50", batch_size=3, device=CPU,
                          dtype=None)
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


def prefix_outputs(folder, megabytes: int) -> tuple[PrefixOutputs, Counted]:
    """Training outputs of a frozen linear prefix over 12 random 8x8 images, 3 views."""
    torch.manual_seed(0)
    images = prepared_images(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8), folder)
    prefix = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
    v = variant(augment_views=3, batch_size=4)
    budget = Budget(megabytes)
    outputs = PrefixOutputs(FramedImages(images, v, budget=budget, device=CPU), prefix, v,
                            augment="study", budget=budget, device=CPU, dtype=None)
    outputs.rows.compute = Counted(outputs.rows.compute)
    return outputs, outputs.rows.compute


@pytest.mark.parametrize("megabytes", [1, 0], ids=["in memory", "on disk"])
def test_prefix_outputs_are_computed_when_first_drawn(tmp_path, megabytes):
    outputs, compute = prefix_outputs(tmp_path, megabytes)
    assert not outputs.rows.done.any()
    (features,) = outputs[torch.tensor([5, 7]), torch.tensor([2, 0])]
    assert sorted(compute.asked) == [7, 2 * 12 + 5]  # slot = view x 12 + image
    # each is the prefix's output for its image's view, augmented by its own seeded draws
    image = outputs.framed[torch.tensor([5])]
    expected = outputs.prefix(model_input(image, "resnet50", draws=view_draws(
        outputs.seed, torch.tensor([5]), torch.tensor([2]))))
    assert torch.allclose(features[0].flatten(), expected.flatten(), atol=1e-6)


def test_outputs_computed_when_drawn_do_not_depend_on_the_order_of_draws(tmp_path):
    a, _ = prefix_outputs(tmp_path / "a", megabytes=0)
    b, _ = prefix_outputs(tmp_path / "b", megabytes=1)
    slots = torch.tensor([0, 13, 35, 7])
    assert torch.equal(a.rows.get(slots), b.rows.get(slots.flip(0)).flip(0))


def epoch_batches(seed=7, epoch=2, draws=50, rank=0, processes=1, loss_weights=None):
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sampler = EpochSampler(weights, torch.ones(4) if loss_weights is None else loss_weights,
                           seed=seed, draws=draws, views=8, batch_size=8, rank=rank,
                           processes=processes)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_an_epochs_draws_depend_on_the_seed_and_the_epoch_alone():
    second, again = epoch_batches(), epoch_batches()
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for a, b in zip(second, again)
               for k in ("images", "views", "augment"))
    order = torch.cat([b.images for b in second])
    assert len(order) == 50 and all(b.share == 1.0 for b in second)
    assert not torch.equal(torch.cat([b.images for b in epoch_batches(epoch=1)]), order)
    assert not torch.equal(torch.cat([b.images for b in epoch_batches(seed=8)]), order)


def test_processes_share_every_batch_and_draw_what_one_process_draws():
    # 50 draws in batches of 8: the last batch holds 2, one per process of 2, none of 3
    loss_weights = torch.tensor([1.0, 1.0, 3.0, 1.0])  # prepare.balance=class_weights
    one = epoch_batches(loss_weights=loss_weights)
    for processes, steps in ((2, 7), (3, 6)):
        ranks = [epoch_batches(rank=r, processes=processes, loss_weights=loss_weights)
                 for r in range(processes)]
        assert all(len(batches) == steps for batches in ranks)
        for step, parts in enumerate(zip(*ranks)):
            for k in ("images", "views", "augment"):
                assert torch.equal(torch.cat([getattr(p, k) for p in parts]),
                                   getattr(one[step], k))
            # each share's mean loss x its share, averaged over the processes (as DDP
            # averages gradients): the whole batch's class-weighted mean
            per_image = torch.rand(len(one[step].images))
            w = loss_weights[one[step].images]
            means = [(w[i] * per_image[i]).sum() / w[i].sum() for i in torch.arange(
                len(w)).tensor_split(processes)]
            averaged = sum(m * p.share for m, p in zip(means, parts)) / processes
            assert averaged.item() == pytest.approx(((w * per_image).sum() / w.sum()).item())


def test_experiments_side_by_side_take_a_gpu_each_and_share_the_cpus(tmp_path, monkeypatch):
    from src.lib import device, distributed
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    try:
        # a lock per GPU, held while its process runs: here, three trainings in one process
        assert [distributed.free_gpu(2) for _ in range(3)] == [0, 1, 0]
    finally:
        while distributed._claimed:
            distributed._claimed.pop().close()
    assert distributed.free_gpu(2) == 0  # released
    distributed._claimed.pop().close()
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(device, "queue_workers", lambda: 2)
    device.cpu_share.cache_clear()
    try:  # 8 usable CPUs, 2 experiments side by side, each with 2 processes, or 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert device.cpu_share() == 2
        device.cpu_share.cache_clear()
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert device.cpu_share() == 4
    finally:
        device.cpu_share.cache_clear()
