from dataclasses import replace

import pytest
import torch
from torch import nn

from src.lib.architectures import ARCHITECTURES
from src.lib.config import parse_config
from src.lib.errors import UserError
from src.lib.explain import cam_layer, grad_cam
from src.lib.models import (
    build_model, count_parameters, forward_train, set_train_mode, split_frozen
)
from tests.conftest import shipped_params


def variant(name, **train):
    raw = shipped_params()
    raw["train"].update({"weights": "none", **train})
    return parse_config(raw).variant(name)


@pytest.mark.parametrize("name, trainable, total", [
    ("cnn", 14_547_908, 14_547_908),            # the study's CNN, from scratch
    ("resnet50_fc", 8_196, 23_516_228),         # fc only
    ("resnet50", 14_972_932, 23_516_228),       # layer4 + fc
    ("inception_v3_fc", 11_272, 24_354_536),    # fc + AuxLogits.fc
    ("inception_v3", 15_388_680, 24_354_536),   # Mixed_7a/7b/7c + fc + aux branch
])
def test_trainable_parameters_match_the_study(name, trainable, total):
    v = variant(name)
    if name == "cnn":  # the study's 224 px input; the shipped 64 px makes the first dense layer smaller
        assert count_parameters(build_model(v, 4)) == (2_751_428, 2_751_428)
        v = replace(v, image_size=224)
    assert count_parameters(build_model(v, 4)) == (trainable, total)


def test_frozen_batchnorm_stays_in_eval_mode_while_training():
    model = build_model(variant("resnet50"), 4)
    set_train_mode(model)
    assert not model.bn1.training and not model.layer3[0].bn1.training
    assert model.layer4[0].bn1.training and model.training
    before = model.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer3[0].bn1.running_mean, before)


def test_inception_adds_its_auxiliary_loss_at_weight_0_4():
    v = variant("inception_v3")
    _, head = split_frozen(build_model(v, 4), v)
    set_train_mode(head)
    features, targets = torch.randn(2, 768, 17, 17), torch.tensor([0, 3])
    torch.manual_seed(0)
    logits, aux = head(features)
    assert logits.shape == aux.shape == (2, 4)
    torch.manual_seed(0)  # the same dropout masks
    loss, _ = forward_train(head, (features,), targets, nn.functional.cross_entropy)
    expected = nn.functional.cross_entropy(logits, targets) + \
        0.4 * nn.functional.cross_entropy(aux, targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_missing_imagenet_weights_name_the_file_and_the_way_out(monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(ResNet50_Weights.IMAGENET1K_V2.__class__, "get_state_dict", offline)
    with pytest.raises(UserError) as err:
        build_model(variant("resnet50", weights="imagenet"), 4)
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and "checkpoints" in message  # IMAGENET1K_V1
    assert "train.weights=none" in message
    with pytest.raises(UserError, match="resnet50-11ad3fa6.pth"):  # torchvision's newer recipe
        build_model(variant("resnet50", weights="IMAGENET1K_V2"), 4)
    with pytest.raises(UserError, match="no IMAGENET1K_V9 for resnet50; use imagenet, none or "
                                        "one of IMAGENET1K_V1, IMAGENET1K_V2"):
        build_model(variant("resnet50", weights="IMAGENET1K_V9"), 4)


def test_weights_from_a_local_state_dict_file(tmp_path):
    from torchvision.models import resnet50
    reference = resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    model = build_model(variant("resnet50", weights=str(tmp_path / "r50.pth")), 4)
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_cnn_is_the_studys_layer_for_layer():
    # The study's code: five conv-BN-ReLU-maxpool blocks, Dropout2d(0.15) after blocks 3 to 5,
    # dense 512 -> Dropout(0.4) -> 256 -> Dropout(0.25) -> 4 classes.
    block = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    expected = block * 2 + (block + ["Dropout2d"]) * 3 + [
        "Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    model = build_model(variant("cnn"), 4)
    assert [type(m).__name__ for m in model] == expected
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [32, 64, 128, 256, 512]
    assert [m.p for m in model if isinstance(m, nn.Dropout2d)] == [0.15, 0.15, 0.15]
    assert [m.p for m in model if type(m) is nn.Dropout] == [0.4, 0.25]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [512, 256, 4]


def registered(arch: str, trainable: str):
    """A variant of any registered architecture, at its smallest input size."""
    raw = shipped_params()
    raw["train"]["weights"] = "none"
    raw["variants"] = {"v": {"arch": arch, "trainable": trainable,
                             "image_size": ARCHITECTURES[arch].min_size}}
    raw["model"] = "v"
    return parse_config(raw).variant("v")


@pytest.mark.parametrize("arch, trainable", [(a, t) for a, spec in ARCHITECTURES.items()
                                             for t in spec.trainable])
def test_every_architecture_splits_into_a_frozen_prefix_and_the_head_it_trains(arch, trainable):
    v = registered(arch, trainable)
    model = build_model(v, 3).eval()
    state = len(model.state_dict())
    prefix, head = split_frozen(model, v)
    assert len(model.state_dict()) == state  # splitting leaves the model whole
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained and trained <= {id(p) for p in head.parameters()}
    if prefix is not None:
        assert not any(p.requires_grad for p in prefix.parameters())
    x = torch.rand(2, 1 if ARCHITECTURES[arch].grayscale else 3, v.image_size, v.image_size)
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (2, 3)
        features = (x,) if prefix is None else prefix(x)
        features = features if isinstance(features, tuple) else (features,)
        assert torch.allclose(head.eval()(*features), expected, atol=1e-4)


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "inception_v3"
                                  else a for a in ARCHITECTURES])
def test_grad_cam_finds_every_architectures_layer_and_maps_the_whole_image(arch):
    v = registered(arch, "all")
    model = build_model(v, 3).eval()
    x = torch.rand(1, 1 if ARCHITECTURES[arch].grayscale else 3, v.image_size, v.image_size)
    heatmap, logits = grad_cam(model, cam_layer(model, arch), x)
    assert heatmap.shape == (1, v.image_size, v.image_size) and logits.shape == (1, 3)
    assert heatmap.min() >= 0 and heatmap.max() <= 1
