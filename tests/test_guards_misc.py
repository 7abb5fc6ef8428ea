"""Guards found by user probes, each refused before compute (exit 2, one ``error:`` line) or recorded
as what it is:

- a sweep name or ``--tracker-group`` that would put tracker files outside ``<out>/tracking``;
- ``lorabench sweep --val-size N`` larger than a task's training set: refused once, before any run;
- a non-finite regularizer weight (``mask_target:weight=inf``);
- a decoder blown up by a huge learning rate under ``--regularizer mask_target`` ends ``diverged``;
- ``transfer trans_lora --seeds`` fewer than the task's classes (the seeds are stratified);
- ``federate`` settings given as YAML strings are read as their types or refused with a ConfigError.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml


from helpers_cli import refused
from lorabench import trackers
from lorabench.config import RunConfig
from lorabench.errors import ConfigError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
BASE = {"model": "minilm", "layers": 2, "train_limit": 8, "eval_limit": 8, "max_length": 16}
TRAIN = "sentence\tlabel\n" + "".join(f"film number {i} is {'fine' if i % 2 else 'dull'}\t{i % 2}\n" for i in range(6))
DEV = "sentence\tlabel\na fine film\t1\na dull film\t0\n"


def sweep_file(root: Path, spec: dict, name: str = "s.yaml") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_glue(root: Path) -> Path:
    """A GLUE folder whose SST-2 holds 6 training examples and 2 dev examples."""
    (root / "glue" / "SST-2").mkdir(parents=True)
    (root / "glue" / "SST-2" / "train.tsv").write_text(TRAIN)
    (root / "glue" / "SST-2" / "dev.tsv").write_text(DEV)
    return root / "glue"




def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


# ---- 1. names that become tracker folders ------------------------------------------------------------


def test_a_sweep_named_outside_its_folder_is_refused(tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b" / "c" / "work"
    spec = sweep_file(work, {"name": "../../../x", "base": BASE, "variants": {"lora": {"lr": [1e-3]}}})
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    refused(["sweep", str(spec), "--dry-run"], capsys, "sweep name '../../../x'", "letters, digits")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("flags, fragment", [
    (["--tracker-group", "../../../x"], "--tracker-group '../../../x'"),
    ([], "sweep name (the tracker group of its runs) '..x y'"),  # the file's name: becomes the group
])
def test_a_tracker_group_outside_the_tracking_folder_is_refused_before_any_run(flags, fragment, tmp_path, capsys,
                                                                              monkeypatch):
    pytest.importorskip("tensorboard")
    name = "..x y" if not flags else "s"
    spec = sweep_file(tmp_path / "in", {"name": name, "base": BASE, "variants": {"lora": {"lr": [1e-3]}}})
    monkeypatch.setattr("lorabench.commands.sweep.run_sweep", lambda *a, **k: pytest.fail("a run started"))
    out = tmp_path / "out"
    refused(["sweep", str(spec), "--out", str(out), "--log-with", "tensorboard", *flags], capsys, fragment)
    assert not out.exists()


def test_tracker_names_are_one_folder_each(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = RunConfig.from_dict({"log_with": "tensorboard", "tracker_group": "g", "out": str(tmp_path / "o")})
    assert trackers.check_names(cfg, "abc123") == ("g", trackers.run_name(cfg, "abc123"))
    with pytest.raises(ConfigError, match="tracker run name"):
        trackers.check_names(cfg, "../../escaped")
    bad = RunConfig.from_dict({"log_with": "tensorboard", "tracker_group": "../../../x",
                               "out": str(tmp_path / "a" / "b" / "o")})
    with pytest.raises(ConfigError, match="--tracker-group '../../../x'"):
        trackers.open_run(bad, "abc123")
    assert not any(tmp_path.rglob("*tfevents*"))  # no tracker started anywhere


@needs_glue
def test_train_refuses_a_tracker_group_outside_the_tracking_folder(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "a" / "b" / "out"
    refused(["train", "--model", "minilm", "--layers", "2", "--train-limit", "8", "--eval-limit", "8",
             "--max-length", "16", "--data-dir", str(GLUE), "--log-with", "tensorboard",
             "--tracker-group", "../../../x", "--out", str(out), "--quiet"], capsys, "--tracker-group '../../../x'")
    assert not any(tmp_path.rglob("*tfevents*")) and not list(out.glob("run-*.json"))


# ---- 2. --val-size checked once for the whole sweep ------------------------------------------------


def test_a_sweep_val_size_beyond_the_training_set_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    glue = tiny_glue(tmp_path)
    spec = sweep_file(tmp_path / "in", {"base": BASE, "seeds": [0, 1], "variants": {"lora": {"lr": [1e-3, 2e-3]}}})
    monkeypatch.setattr("lorabench.commands.sweep.run_sweep", lambda *a, **k: pytest.fail("a run started"))
    out = tmp_path / "out"
    refused(["sweep", str(spec), "--out", str(out), "--data-dir", str(glue), "--val-size", "6"], capsys,
            "--val-size 6 leaves no training examples", "SST-2 train has 6", "--val-size 1")
    assert not out.exists()


def test_a_val_size_that_fits_is_no_problem(tmp_path):
    from lorabench.sweep.plan import load_sweep, val_size_problems

    glue = tiny_glue(tmp_path)
    spec = sweep_file(tmp_path / "in", {"base": BASE, "variants": {"lora": {"lr": [1e-3]}}})
    assert val_size_problems(load_sweep(spec, {"data_dir": str(glue), "val_size": 5})) == []
    assert val_size_problems(load_sweep(spec, {"data_dir": str(glue)})) == []  # none asked: nothing read
    [problem] = val_size_problems(load_sweep(spec, {"data_dir": str(glue), "val_size": 9}))
    assert problem.startswith("--val-size 9 leaves no training examples: SST-2 train has 6")


# ---- 3. regularizer weights ----------------------------------------------------------------------------

LM = {"model": "smollm2-135m", "head": "lm"}


@pytest.mark.parametrize("weight", ["inf", "-inf", "nan", "-1"])
def test_a_non_finite_or_negative_regularizer_weight_is_refused(weight):
    with pytest.raises(ConfigError, match="weight must be"):
        RunConfig.from_dict({**LM, "regularizer": f"mask_target:weight={weight}"})


def test_the_cli_refuses_an_infinite_weight_before_any_compute(monkeypatch, capsys):
    monkeypatch.setattr("lorabench.run.load", lambda cfg: pytest.fail("loaded a model"))
    refused(["train", "--model", "smollm2-135m", "--head", "lm", "--regularizer", "mask_target:weight=inf",
             "--quiet"], capsys, "weight", "finite", "mask_target:weight=1")


# ---- 4. a blown-up decoder under mask_target ends diverged ---------------------------------------------


def test_mask_target_term_is_nan_for_a_collapsed_row():
    from lorabench.regularizers.mask_target import masked_kl

    g = torch.Generator().manual_seed(0)
    base, tuned = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    target = torch.tensor([1, 2, 3])
    assert torch.isfinite(masked_kl(base, tuned, target)).all()
    tuned[1] = 0.0  # activations overflowed: the final norm gave a zero hidden state, every logit equal
    kl = masked_kl(base, tuned, target)
    assert math.isnan(kl[1].item()) and torch.isfinite(kl[[0, 2]]).all()


@needs_glue
def test_a_blown_up_run_with_mask_target_ends_diverged(tmp_path):
    from lorabench.run import execute

    cfg = RunConfig.from_dict({**LM, "layers": 2, "regularizer": "mask_target", "lr": 1e4, "train_limit": 64,
                               "batch_size": 8, "epochs": 1, "eval_limit": 16, "max_length": 32, "data_dir": str(GLUE),
                               "quiet": True, "out": str(tmp_path)})
    with pytest.warns(UserWarning, match="diverged"):
        result = execute(cfg, progress=False)
    assert result["status"] == "diverged" and "lower the learning rate" in result["error"], result["error"]


# ---- 5. trans_lora seeds cover every class ---------------------------------------------------------------


def test_trans_lora_refuses_fewer_seeds_than_classes():
    from lorabench.transfer.registry import get

    opts = get("trans_lora").Options
    with pytest.raises(ConfigError, match=r"--seeds 1 is fewer than the 2 classes of SST-2.*--seeds 2 or more"):
        opts(seeds=1)
    with pytest.raises(ConfigError, match=r"--seeds 2 is fewer than the 3 classes of MNLI.*--seeds 3"):
        opts(task="mnli", seeds=2)
    assert opts(seeds=2).seeds == 2 and opts(task="stsb", seeds=1).seeds == 1  # regression: no classes


def test_trans_lora_cli_refuses_one_seed_before_loading_anything(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("lorabench.models.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    out = tmp_path / "out"
    refused(["transfer", "trans_lora", "--seeds", "1", "--out", str(out), "--quiet"], capsys, "--seeds 1",
            "--seeds 2 or more")
    assert not out.exists()


# ---- 6. federated settings from YAML strings -----------------------------------------------------------


def test_fed_settings_read_strings_as_their_types():
    from lorabench.federated.settings import FedSettings

    s = FedSettings("lora_fair", clients="4", rounds="3", local_epochs="2", fraction="0.5", beta="0.5",
                    options={"lam": "0.1", "steps": "20"})
    assert (s.clients, s.rounds, s.local_epochs, s.fraction, s.beta) == (4, 3, 2.0, 0.5, 0.5)
    assert s.method_options().lam == 0.1 and s.method_options().steps == 20
    assert FedSettings("fedavg", local_epochs=1).record()["local_epochs"] == 1  # numbers kept as written


@pytest.mark.parametrize("kw, message", [
    ({"clients": "four"}, "--clients must be an integer, got 'four'"),
    ({"rounds": "x"}, "--rounds must be an integer, got 'x'"),
    ({"local_epochs": "x"}, "--local-epochs must be a number, got 'x'"),
    ({"fraction": [0.5]}, "--fraction must be a number"),
    ({"method": ["fedavg"]}, "--method must be a string"),
    ({"options": "x"}, "options (--fed-opt) must be a mapping, got 'x'"),
    ({"method": "lora_fair", "options": {"lam": "x"}}, "--fed-opt lam must be a number, got 'x'"),
])
def test_fed_settings_of_the_wrong_type_are_config_errors(kw, message):
    from lorabench.federated.settings import FedSettings

    with pytest.raises(ConfigError) as e:
        FedSettings(**{"method": "fedavg", **kw})
    assert message in str(e.value)


def test_federate_reads_a_yaml_string_and_refuses_a_bad_one(tmp_path, capsys, monkeypatch):
    import argparse

    from lorabench.commands.federate import settings_from_args

    good = tmp_path / "good.yaml"
    good.write_text('model: minilm\nlayers: 2\ntrain_limit: 16\nfederated: {method: fedavg, clients: "4", '
                    'rounds: "2"}\n')
    cfg, settings = settings_from_args(argparse.Namespace(config=str(good)))
    assert settings.clients == 4 and settings.rounds == 2 and cfg.scenario["clients"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text('model: minilm\nlayers: 2\nfederated: {method: lora_fair, options: {lam: x}}\n')
    monkeypatch.setattr("lorabench.run.execute", lambda *a, **k: pytest.fail("a run started"))
    refused(["federate", "--config", str(bad), "--out", str(tmp_path / "out")], capsys,
            "--fed-opt lam must be a number")
