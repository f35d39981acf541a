"""MobileNetV2 with torchvision's ImageNet weights: the layout, the authentication of the file, the one-line
refusals, and the fusion model built on it."""

import shutil

import pytest
import torch

from conftest import fedmm
from fedmm.backends.mobilenet import SHA256, MobileNetV2, load_mobilenet_v2, sha256_of, weights_file
from fedmm.errors import FedmmError


def test_the_layout_is_torchvisions_and_the_packaged_weights_load_strictly():
    net = MobileNetV2()
    # torchvision's documented size of mobilenet_v2 (MobileNet_V2_Weights.IMAGENET1K_V1.meta["num_params"])
    assert sum(p.numel() for p in net.parameters()) == 3_504_872
    path, digest = weights_file("mobilenet_v2")
    assert path.name == "mobilenet_v2-b0353104.pth" and digest == SHA256 and sha256_of(path) == SHA256
    loaded = load_mobilenet_v2("mobilenet_v2").eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == set(loaded.state_dict())  # strict: every tensor of the file has its place
    with torch.no_grad():
        out = loaded(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1280) and (out >= 0).all()  # pooled ReLU6 activations
    # The ImageNet head on the pooled features gives a proper distribution over the 1,000 classes.
    assert loaded.classifier[1].weight.shape == (1000, 1280)


def test_a_tampered_or_unnamed_weight_file_is_refused(tmp_path):
    path, _ = weights_file("mobilenet_v2")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    assert isinstance(load_mobilenet_v2(str(copy)), MobileNetV2)  # a faithful copy passes
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(FedmmError, match="is not the published MobileNetV2 weight file"):
        load_mobilenet_v2(str(copy))
    with pytest.raises(FedmmError, match="cannot authenticate"):
        load_mobilenet_v2(str(tmp_path / "mine.pth"))
    with pytest.raises(FedmmError, match="weights not found"):
        load_mobilenet_v2(str(tmp_path / "mobilenet_v2-00000000.pth"))


def test_the_cli_refuses_a_tampered_file_in_one_line(tmp_path):
    path, _ = weights_file("mobilenet_v2")
    bad = tmp_path / path.name
    bad.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    proc = fedmm(
        "run",
        "task=synthetic",
        "model=fusion_mobilenet",
        f"model.image_encoder={bad}",
        "rounds=1",
        f"output_dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "is not the published MobileNetV2 weight file" in proc.stderr and "Traceback" not in proc.stderr
