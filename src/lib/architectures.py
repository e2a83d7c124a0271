"""The architectures a variant may name (`variants.<name>.arch`): one entry per network with all
that the rest of the code needs to know of it. A variant of a registered architecture is a
`params.yaml` entry and nothing else; a new architecture is a new entry here.

Plain data only, no torch: `load_config` checks variants against this table in every stage, and
most stages never load torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """One network. Module paths are as `model.get_submodule` reads them."""
    weights: str | None     # torchvision's weights that `train.weights: imagenet` loads (a member
                            # of its weights enum); None: trained from scratch only
    mean: tuple             # the input normalization those weights were trained with
    std: tuple
    min_size: int           # the input side it accepts: min_size .. max_size, or up to
    max_size: int | None    # prepare.image_size when None
    classifier: tuple       # the final layers: their last Linear gets one output per class, and
                            # `trainable: classifier` trains them alone
    last_block: tuple       # what `trainable: last_block` trains besides the classifier
    cam_layer: str          # the activations Grad-CAM weighs: the last convolutional block's
    # The forward pass as a sequence of modules: paths, or the functional steps between them
    # ("torch.flatten", "F.relu", "F.adaptive_avg_pool2d", as its forward calls them). The
    # frozen layers before the first trained one are then a prefix whose outputs are cached
    # (models.split_frozen). Empty: only the classifier's input is cached, as the output of the
    # model with the classifier left out.
    layers: tuple = ()
    grayscale: bool = False  # one input channel (the study's CNN)
    options: dict = field(default_factory=dict)  # keyword arguments of torchvision's builder

    @property
    def trainable(self) -> tuple[str, ...]:
        return ("classifier", "last_block", "all") if self.weights else ("all",)


def _numbered(path: str, count: int) -> tuple[str, ...]:
    return tuple(f"{path}.{i}" for i in range(count))


ARCHITECTURES = {
    # The study's 5-block CNN (models.StudyCNN), grayscale, from scratch; module 20 is the ReLU
    # after the last convolution and its BatchNorm.
    "cnn": Architecture(weights=None, mean=(0.5,), std=(0.5,), min_size=32, max_size=None,
                        classifier=(), last_block=(), cam_layer="20", grayscale=True),
    # IMAGENET1K_V1, the original ImageNet ResNet-50 that the study fine-tuned; IMAGENET1K_V2
    # (torchvision's newer recipe) is `train.weights: IMAGENET1K_V2`.
    "resnet50": Architecture(
        weights="IMAGENET1K_V1", mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=32,
        max_size=None, classifier=("fc",), last_block=("layer4",), cam_layer="layer4",
        layers=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                "avgpool", "torch.flatten", "fc")),
    # Its weights map [0,1] to [-1,1] (normalized here, so torchvision's transform_input stays
    # off); the auxiliary classifier trains too (loss weight 0.4) and needs 299 px. Split by
    # models.InceptionPrefix and InceptionHead.
    "inception_v3": Architecture(
        weights="IMAGENET1K_V1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_size=299,
        max_size=None, classifier=("fc", "AuxLogits.fc"),
        last_block=("Mixed_7a", "Mixed_7b", "Mixed_7c", "AuxLogits"), cam_layer="Mixed_7c",
        options={"aux_logits": True, "transform_input": False}),
    # The last stage and the 1x1 convolution after it.
    "efficientnet_v2_s": Architecture(
        weights="IMAGENET1K_V1", mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=32,
        max_size=None, classifier=("classifier",), last_block=("features.6", "features.7"),
        cam_layer="features", layers=(*_numbered("features", 8), "avgpool", "torch.flatten",
                                      "classifier")),
    "convnext_tiny": Architecture(
        weights="IMAGENET1K_V1", mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=32,
        max_size=None, classifier=("classifier",), last_block=("features.7",),
        cam_layer="features", layers=(*_numbered("features", 8), "avgpool", "classifier")),
    "densenet121": Architecture(
        weights="IMAGENET1K_V1", mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=32,
        max_size=None, classifier=("classifier",),
        last_block=("features.denseblock4", "features.norm5"), cam_layer="features",
        layers=(*(f"features.{n}" for n in (
            "conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
            "transition2", "denseblock3", "transition3", "denseblock4", "norm5")),
            "F.relu", "F.adaptive_avg_pool2d", "torch.flatten", "classifier")),
    # The last encoder layer and the final LayerNorm; its position embedding fixes 224 px.
    # Grad-CAM weighs the tokens entering that layer, laid back on their 14x14 grid.
    "vit_b_16": Architecture(
        weights="IMAGENET1K_V1", mean=IMAGENET_MEAN, std=IMAGENET_STD, min_size=224,
        max_size=224, classifier=("heads",),
        last_block=("encoder.layers.encoder_layer_11", "encoder.ln"),
        cam_layer="encoder.layers.encoder_layer_11.ln_1"),
}
