import math

import pytest
import torch
from torch import nn

from src.lib.device import grad_scaler
from src.lib.engine import Batches, TrainingSetup, train_one_epoch

CPU = torch.device("cpu")


def tiny_loss(logits, targets):
    # Gradients this small flush to zero in float16: what loss scaling is for.
    return 1e-8 * nn.functional.cross_entropy(logits, targets)


def one_epoch(scaler) -> float:
    """How far one float16-autocast epoch moves a linear classifier's weights."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    before = head[1].weight.detach().clone()
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    batches = Batches(images, torch.arange(16) % 4, arch="resnet50", device=CPU,
                      dtype=torch.float16)
    setup = TrainingSetup(head=head, prefix=None, batches=batches,
                          optimizer=torch.optim.SGD(head.parameters(), lr=1.0),
                          criterion=tiny_loss, scaler=scaler)
    scores = train_one_epoch(setup, torch.arange(16), 8, device=CPU, dtype=torch.float16,
                             desc="test")
    assert math.isfinite(scores["loss"])
    return (head[1].weight.detach() - before).abs().max().item()


def test_float16_autocast_scales_the_loss_so_small_gradients_still_train():
    assert one_epoch(torch.amp.GradScaler("cpu", enabled=False)) == 0  # flushed to zero
    assert grad_scaler(CPU, torch.float16).is_enabled()
    assert one_epoch(grad_scaler(CPU, torch.float16)) > 0


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
