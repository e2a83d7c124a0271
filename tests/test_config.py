import pytest

from src.lib.config import ConfigError, parse_config
from tests.conftest import shipped_params


def test_shipped_params_are_valid_and_merge_train_defaults():
    cfg = parse_config(shipped_params())
    assert list(cfg.variants) == ["cnn", "resnet50_fc", "resnet50", "inception_v3_fc",
                                  "inception_v3"]
    assert cfg.model in cfg.variants
    resnet = cfg.variant("resnet50")
    assert (resnet.arch, resnet.trainable) == ("resnet50", "last_block")
    assert resnet.train == cfg.train  # null overrides keep the defaults


def test_variant_override_wins_over_train_default():
    raw = shipped_params()
    raw["variants"]["cnn"]["lr"] = 0.01
    cfg = parse_config(raw)
    assert cfg.variant("cnn").train.lr == 0.01
    assert cfg.variant("resnet50").train.lr == cfg.train.lr


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(model="vgg16"), "model: 'vgg16' is not allowed; use one of cnn, "
                                        "resnet50_fc, resnet50, inception_v3_fc, inception_v3"),
    (lambda p: p["variants"]["cnn"].update(arch="vgg"), "variants.cnn.arch: 'vgg'"),
    (lambda p: p["train"].update(lr=-0.1), "train.lr: -0.1 must be a positive number"),
    (lambda p: p["variants"]["resnet50"].update(lr=-1), "variants.resnet50.lr"),
    (lambda p: p["train"].update(batch_size="32"), "train.batch_size: expected an integer"),
    (lambda p: p["train"].update(max_epochs=True), "train.max_epochs: expected an integer"),
    (lambda p: p["variants"]["inception_v3"].update(image_size=224),
     "variants.inception_v3.image_size: 224 does not fit inception_v3; use 299 to 299"),
    (lambda p: p["variants"]["cnn"].update(trainable="classifier"),
     "variants.cnn.trainable: 'classifier' is not allowed; use one of all"),
    (lambda p: p["data"].update(source="s3"), "data.source"),
    (lambda p: p["train"].update(device="tpu"), "train.device"),
    (lambda p: p["prepare"].update(balance="smote"), "prepare.balance"),
    (lambda p: p["variants"]["cnn"].update(framing="crop"),
     "variants.cnn.framing: 'crop' is not allowed; use one of letterbox, body, body_masked"),
    (lambda p: p["train"].update(augment="heavy"), "train.augment"),
    (lambda p: p["variants"]["resnet50_fc"].update(precision="fp16"),
     "variants.resnet50_fc.precision: 'fp16' is not allowed; use one of auto, fp32, bf16"),
    (lambda p: p["train"].update(colour="red"), "train.colour: unknown key"),
    (lambda p: p["data"].update(classes={"normal": "normal"}),
     "data.classes: expected a mapping of at least two labels"),
    (lambda p: p["data"]["classes"].update(Benign="benign"),
     "data.classes.Benign: a label is written in lower-case letters"),
    (lambda p: p["data"]["classes"].update(tumour=["adeno", 3]),
     "data.classes.tumour: expected a folder-name prefix or a list of them"),
    (lambda p: p["data"]["classes"].update(other="Large.Cell.Carcinoma"),
     "prefix 'large_cell_carcinoma' is also listed under data.classes.large_cell_carcinoma"),
    (lambda p: p["data"]["split"].update(train=0.8),
     "data.split: train + valid + test = 1.1, not 1"),
    (lambda p: p["data"]["split"].update(valid=0), "data.split.valid: 0 must lie between 0"),
    (lambda p: p["prepare"].update(dicom_window_width=0), "prepare.dicom_window_width: 0"),
    (lambda p: p["train"].update(cache_mb=-1), "train.cache_mb: -1 is too small"),
    (lambda p: p["prepare"].update(fold=5), "prepare.fold: 5 is not a fold; use null (the data's "
                                            "own train and valid) or 0 to 4 (prepare.folds)"),
    (lambda p: p["prepare"].update(fold="0"), "prepare.fold: expected an integer"),
    (lambda p: p["prepare"].update(folds=1), "prepare.folds: 1 is too small"),
])
def test_invalid_params_name_the_key_and_allowed_values(edit, message):
    raw = shipped_params()
    edit(raw)
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_labels_are_sorted_and_folder_prefixes_normalized():
    raw = shipped_params()
    raw["data"]["classes"] = {"tumour": ["Adeno-Carcinoma", "large cell"], "healthy": "normal"}
    data = parse_config(raw).data
    assert data.labels == ("healthy", "tumour")
    assert data.classes["tumour"] == ("adeno_carcinoma", "large_cell")
