"""The segment kind: U-Net, image/mask reader, Dice/IoU, synthetic source, recipe, refusals."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch
from PIL import Image

from lorabench import run
from lorabench.commands import main as cli
from lorabench.config import RunConfig
from lorabench.errors import ConfigError, DataError, VariantError
from lorabench.segmentation.data import patches, read_folder, split
from lorabench.segmentation.metrics import mean_scores, scores
from lorabench.segmentation.synthetic import membranes
from lorabench.segmentation.unet import UNet, UNetShape, count


def expected_params(base: int, depth: int, cin: int = 1) -> int:
    """Conv weights + biases and GroupNorm affine, level by level (Ronneberger et al.'s layout)."""
    conv = lambda i, o, k: i * o * k * k + o
    double = lambda i, o: conv(i, o, 3) + conv(o, o, 3) + 4 * o
    w = [base * 2 ** level for level in range(depth + 1)]
    down = sum(double(cin if level == 0 else w[level - 1], w[level]) for level in range(depth + 1))
    up = sum(conv(w[level + 1], w[level], 1) + double(2 * w[level], w[level]) for level in range(depth))
    return down + up + conv(w[0], 1, 1)


@pytest.mark.parametrize("base,depth", [(8, 2), (16, 4), (32, 4)])
def test_unet_parameter_count(base, depth):
    model = UNet(UNetShape(base, depth, min(8, base)))
    assert count(model) == expected_params(base, depth)
    if base >= 16:
        assert 1_000_000 <= count(model) <= 8_000_000


def test_unet_shapes_and_conv_names():
    model = UNet(UNetShape(8, 2))
    x = torch.randn(2, 1, 32, 48)
    assert model(x).shape == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 1, 30, 32))
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(model.conv_names()) == convs
    assert set(model.conv_names("encoder")) | set(model.conv_names("decoder")) | {"head"} == convs
    with pytest.raises(ConfigError):
        UNetShape(12, 2, 8)


def test_scores_by_hand():
    p = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    t = torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)
    dice, iou = scores(p, t)  # |P n G| = 1, |P| = |G| = 2, |P u G| = 3
    assert dice == pytest.approx(0.5) and iou == pytest.approx(1 / 3)
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert scores(empty, empty) == (1.0, 1.0)  # nothing to find, nothing found
    assert scores(empty, t) == (0.0, 0.0) and scores(p, empty) == (0.0, 0.0)
    assert scores(t, t) == (1.0, 1.0)
    mean = mean_scores([p, t], [t, t])  # per image, then averaged
    assert mean["dice"] == pytest.approx(0.75) and mean["iou"] == pytest.approx((1 / 3 + 1) / 2)


def test_synthetic_is_deterministic():
    x, y = membranes(3, 32, torch.Generator().manual_seed(5))
    x2, y2 = membranes(3, 32, torch.Generator().manual_seed(5))
    x3, _ = membranes(3, 32, torch.Generator().manual_seed(6))
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert x.shape == y.shape == (3, 1, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert set(y.unique().tolist()) <= {0.0, 1.0} and 0.02 < y.mean() < 0.5
    assert x[y.bool()].mean() < x[~y.bool()].mean()  # membranes are dark


def write_folder(root, n=3, size=32, sums=False):
    """``n`` synthetic image/mask pairs as PNGs (masks 255 = cell interior, 0 = membrane)."""
    x, y = membranes(n, size, torch.Generator().manual_seed(0))
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i in range(n):
        Image.fromarray((x[i, 0] * 255).byte().numpy()).save(root / "image" / f"{i}.png")
        Image.fromarray(((1 - y[i, 0]) * 255).byte().numpy()).save(root / "label" / f"{i}.png")
    if sums:
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}"
                 for p in sorted(root.glob("*/*.png"))]
        (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return y


def test_reader_reads_and_splits(tmp_path):
    y = write_folder(tmp_path, n=3, sums=True)
    pairs = read_folder(tmp_path)
    assert [p.stem for p in pairs] == ["0", "1", "2"] and pairs[0].image.shape == (32, 32)
    assert torch.equal(pairs[1].mask, y[1, 0].bool())  # dark = membrane = foreground
    assert torch.equal(read_folder(tmp_path, "bright")[1].mask, ~y[1, 0].bool())
    train, test = split(pairs, "0-1", "2")
    assert [p.stem for p in train] == ["0", "1"] and [p.stem for p in test] == ["2"]
    with pytest.raises(DataError, match="share"):
        split(pairs, "0-1", "1-2")
    xs, ys = patches(train, 16, 2, torch.Generator().manual_seed(0))
    assert xs.shape == ys.shape == (4, 1, 16, 16)


@pytest.mark.parametrize("breakage,message", [
    ("missing_mask", "without a partner"), ("size", "must have its image's size"), ("gray", "not a binary mask"),
    ("empty", "no images"), ("checksum", "differ from SHA256SUMS"), ("no_folder", "does not exist"),
    ("no_labels", "no mask folder"),
])
def test_reader_errors(tmp_path, breakage, message):
    write_folder(tmp_path, n=2, sums=breakage == "checksum")
    if breakage == "missing_mask":
        (tmp_path / "label" / "1.png").unlink()
    elif breakage == "size":
        Image.new("L", (16, 32), 255).save(tmp_path / "label" / "1.png")
    elif breakage == "gray":
        Image.new("L", (32, 32), 128).save(tmp_path / "label" / "1.png")
    elif breakage == "empty":
        for p in tmp_path.glob("*/*.png"):
            p.unlink()
    elif breakage == "checksum":
        Image.new("L", (32, 32), 0).save(tmp_path / "image" / "0.png")
    elif breakage == "no_labels":
        for p in (tmp_path / "label").iterdir():
            p.unlink()
        (tmp_path / "label").rmdir()
    folder = tmp_path / "nowhere" if breakage == "no_folder" else tmp_path
    with pytest.raises(DataError, match=message):
        read_folder(folder)


def test_reader_names_the_extra_without_pillow(tmp_path, monkeypatch):
    write_folder(tmp_path, n=1)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(DataError, match=r"pip install lorabench\[vision\]"):
        read_folder(tmp_path)


def tiny(tmp_path, **scenario):
    return {"kind": "segment", "task": "membrane", "data_dir": str(tmp_path / "data"), "out": str(tmp_path / "runs"),
                "epochs": 1, "batch_size": 2, "lr": 1e-2, "quiet": True,
                "scenario": {"base": 8, "depth": 2, "patch": 16, "patches_per_image": 1, "train_images": "0-1",
                          "test_images": "2", "source_steps": 2, "source_batch": 2, **scenario}}


def test_segment_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data")
    result = run.execute(RunConfig(**tiny(tmp_path, arm="full")), progress=False)
    assert result["status"] == "ok" and result["kind"] == "segment" and result["method"] == "segment:full"
    assert result["model"] == "unet" and result["primary_metric"] == "dice"
    test = result["final"]["metrics"]["test"]
    assert 0 <= test["dice"] <= 1 and 0 <= test["iou"] <= test["dice"]  # IoU <= Dice for every image
    assert result["params"]["trainable"] == result["params"]["total"] == expected_params(8, 2)
    assert len(result["history"]) == 1 and result["history"][0]["train_loss"] > 0
    assert result["details"]["source"]["cached"] is False and result["details"]["zero_shot"] is not None
    written = json.loads((tmp_path / "runs" / f"run-{result['run_id']}.json").read_text())
    assert written["final"]["metrics"]["test"]["dice"] == test["dice"]

    decoder = run.execute(RunConfig(**tiny(tmp_path, arm="decoder")), progress=False)
    assert decoder["details"]["source"]["cached"] is True  # one pretrained source serves every arm
    assert decoder["details"]["source"]["sha256"] == result["details"]["source"]["sha256"]
    assert decoder["params"]["trainable"] < decoder["params"]["total"]
    scratch = run.execute(RunConfig(**tiny(tmp_path, arm="scratch")), progress=False)
    assert scratch["details"]["source"] is None and scratch["status"] == "ok"


@pytest.mark.parametrize("arm,label", [("lora", "lora_c"), ("dora", "dora_c"), ("cp_lora", "cp_lora")])
def test_segment_adapter_arm(tmp_path, monkeypatch, arm, label):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data")
    cfg = RunConfig(**tiny(tmp_path, arm=arm, r=2))
    assert cfg.method() == f"segment:{label} r2" and cfg.variant == arm and cfg.r == 2
    try:
        result = run.execute(cfg, progress=False)
    except VariantError as e:
        pytest.skip(f"inject.apply does not take nn.Conv2d yet: {e}")
    assert result["status"] == "ok"
    assert 0 < result["params"]["trainable"] < expected_params(8, 2)
    assert result["details"]["adapted_convs"] == UNet(UNetShape(8, 2)).conv_names()[:-1]  # all but the head


def test_segment_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data")
    t = tiny(tmp_path)
    flags = [f"--scenario={k}={v}" for k, v in t["scenario"].items()]
    code = cli(["segment", "--arm", "scratch", "--data-dir", t["data_dir"], "--out", t["out"], "--epochs", "1",
                "--batch-size", "2", "--quiet", *flags])
    assert code == 0
    assert "segment:scratch" in (tmp_path / "runs" / "segment.md").read_text()


@pytest.mark.parametrize("change,message", [
    ({"max_length": 64}, "does not take --max-length"),
    ({"model": "mpnet"}, "sets model itself"),
    ({"epochs": 1.5}, "whole epochs"),
    ({"task": "sst2"}, "segments images"),
    ({"kind": "run", "scenario": {}}, "use kind segment"),
    ({"scenario": {"arm": "full", "r": 4}}, "drop r"),
    ({"scenario": {"arm": "nope"}}, "not scratch, full, decoder"),
    ({"scenario": {"patch": 20}}, "multiple of 2 \\*\\* depth"),
    ({"scenario": {"colour": 1}}, "not a segment setting"),
    ({"scenario": {"targets": "middle"}}, "targets must be one of"),
])
def test_segment_refusals(tmp_path, change, message):
    given = {**tiny(tmp_path), **change}
    given.pop("data_dir") if given.get("kind") == "run" else None
    with pytest.raises(ConfigError, match=message):
        RunConfig(**given)


def test_missing_data_folder_is_refused(tmp_path):
    cfg = RunConfig(**tiny(tmp_path))
    with pytest.raises(DataError, match="data-dir"):
        cfg.data_fingerprint()


def test_pretraining_and_runs_repeat_bit_for_bit(tmp_path, monkeypatch):
    from lorabench.segmentation.settings import SegmentSettings
    from lorabench.segmentation.source import pretrain

    s = SegmentSettings(base=8, depth=2, patch=16, source_steps=2, source_batch=2)
    a, _ = pretrain(s, torch.device("cpu"), None)
    b, _ = pretrain(s, torch.device("cpu"), None)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data")
    one = run.execute(RunConfig(**tiny(tmp_path, arm="scratch")), progress=False)
    two = run.execute(RunConfig(**{**tiny(tmp_path, arm="scratch"), "out": str(tmp_path / "again")}), progress=False)
    assert one["final"]["metrics"] == two["final"]["metrics"] and one["history"] == two["history"]
