"""Loading never runs code from a file: no pickle, no eval/exec, no remote code unless asked;
paths from sweep files are anchored to the file and results never leave the out folder."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest
import yaml

import lorabench
from lorabench import config, results, sweep
from lorabench.sweep import SweepError

SRC = Path(lorabench.__file__).resolve().parent
GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

#: Token sequences that deserialize or run code. Matched on code tokens only (comments and
#: strings are skipped: "never unpickled" in a docstring is fine).
FORBIDDEN = {
    "torch.load": ["torch", ".", "load"],
    "pickle": ["pickle"],
    "cPickle": ["cPickle"],
    "cloudpickle": ["cloudpickle"],
    "dill": ["dill"],
    "marshal": ["marshal"],
    "shelve": ["shelve"],
    "joblib": ["joblib"],
    "allow_pickle": ["allow_pickle"],
    "eval(": ["eval", "("],
    "exec(": ["exec", "("],
    "compile(": ["compile", "("],
    "__import__": ["__import__"],
    "yaml.unsafe_load": ["yaml", ".", "unsafe_load"],
    "yaml.full_load": ["yaml", ".", "full_load"],
    "yaml.load(": ["yaml", ".", "load", "("],
    "UnsafeLoader": ["UnsafeLoader"],
    "FullLoader": ["FullLoader"],
}
#: Justified exceptions: (file relative to the package, pattern) -> why it is safe.
ALLOWED = {
    ("yamlio.py", "yaml.load("): "Loader=YAMLLoader, a yaml.SafeLoader subclass (checked below) that reads 5e-4 as a float",
}


def code_tokens(text: str) -> list[str]:
    """NAME and OP tokens of Python source; comments and strings dropped."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NAME, tokenize.OP):
            out.append(tok.string)
    return out


def find(tokens: list[str], pattern: list[str]) -> list[int]:
    """Where ``pattern`` starts in ``tokens``; a bare ``eval(`` / ``exec(`` (not ``model.eval(``)."""
    hits = []
    for i in range(len(tokens) - len(pattern) + 1):
        if tokens[i:i + len(pattern)] == pattern and not (pattern[0] in ("eval", "exec", "compile")
                                                          and i > 0 and tokens[i - 1] == "."):
            hits.append(i)
    return hits


def test_the_scanner_finds_what_it_looks_for():
    bad = "import pickle\nx = torch.load(f)\ny = eval(s)\nexec(code)\nyaml.load(t, Loader=yaml.Loader)\n"
    tokens = code_tokens(bad)
    for name in ("pickle", "torch.load", "eval(", "exec(", "yaml.load("):
        assert find(tokens, FORBIDDEN[name]), name
    fine = code_tokens('model.eval()\n"""never unpickled; no torch.load"""\n# eval(x)\nstate = safe_load(f)\n')
    assert not any(find(fine, p) for p in FORBIDDEN.values())


def test_src_never_unpickles_evals_or_execs():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = []
    for path in files:
        tokens = code_tokens(path.read_text())
        rel = path.relative_to(SRC).as_posix()
        for name, pattern in FORBIDDEN.items():
            if find(tokens, pattern) and (rel, name) not in ALLOWED:
                found.append(f"{rel}: {name}")
    assert not found, "code that can run a file's contents: " + ", ".join(found)
    assert issubclass(config.YAMLLoader, yaml.SafeLoader)  # the allow-listed yaml.load is safe
    for rel, name in ALLOWED:  # no stale exceptions
        assert find(code_tokens((SRC / rel).read_text()), FORBIDDEN[name]), (rel, name)


def test_model_weights_load_only_from_safetensors_without_remote_code(monkeypatch):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from lorabench.models import load_model

    calls = []
    for cls in (AutoConfig, AutoTokenizer, AutoModelForSequenceClassification):
        real = cls.from_pretrained

        def record(*args, _real=real, _cls=cls, **kwargs):
            calls.append((_cls.__name__, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    load_model("minilm", "sst2", layers=1)
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in calls), calls
    [model_kwargs] = [k for name, k in calls if name == "AutoModelForSequenceClassification"]
    assert model_kwargs["use_safetensors"] is True  # never a pytorch_model.bin pickle
    calls.clear()
    load_model("minilm", "sst2", layers=1, trust_remote_code=True)  # only when the user passes it
    assert all(kwargs.get("trust_remote_code") is True for _, kwargs in calls), calls


def test_cli_commands_pass_trust_remote_code_false_unless_given(monkeypatch, tmp_path):
    from lorabench import commands as cli
    from lorabench import models

    seen = []

    class Stop(Exception):
        pass

    def fake_load_model(name, task, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise Stop

    monkeypatch.setattr(models, "load_model", fake_load_model)
    assert lorabench.config.RunConfig().trust_remote_code is False
    for extra in ([], ["--trust-remote-code"]):
        with pytest.raises(Stop):
            cli.main(["train", "--out", str(tmp_path / "out"), "--debug", *extra])
    assert seen == [False, True]
    adapter = lorabench.save_adapter(lorabench.apply(_tiny_bert(), "lora", r=2), tmp_path / "adapter")
    with pytest.raises(Stop):
        cli.main(["adapter", str(adapter), "--model", "minilm", "--debug"])
    assert seen[-1] is False


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))


def test_sweep_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    if not (GLUE / "SST-2").is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    (tmp_path / "data").symlink_to(GLUE)
    folder = tmp_path / "project" / "sweeps"
    folder.mkdir(parents=True)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"base": {"data_dir": "../../data", "out": "../results"},
                                    "task_overrides": {"sst2": {"data_dir": "../../data"}},
                                    "variants": {"lora": {"data_dir": ["../../data"]}, "dora": {"lr": 1e-3}}}))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = sweep.load_sweep(path)
    assert s.out == str(tmp_path / "project" / "results")
    assert [r.config.data_dir for r in s.runs] == [str(tmp_path / "data")] * 2  # base, task and grid values
    # flags stay relative to the working directory
    s = sweep.load_sweep(path, {"out": "mine", "data_dir": str(GLUE)})
    assert s.out == "mine" and {r.config.data_dir for r in s.runs} == {str(GLUE)}
    # a folder that does not exist where it is read is an error before anything runs
    path.write_text(yaml.safe_dump({"base": {"data_dir": "glue"}, "variants": {"lora": None}}))
    with pytest.raises(SweepError, match=rf"data_dir {re.escape(str(folder / 'glue'))} is not a folder"):
        sweep.load_sweep(path)
    assert not (elsewhere / "runs").exists() and not (folder / "runs").exists()
    (tmp_path / "file").write_text("x")
    path.write_text(yaml.safe_dump({"base": {"out": "../../file"}, "variants": {"lora": None}}))
    with pytest.raises(SweepError, match="is a file, not a folder"):
        sweep.load_sweep(path)


def test_run_ids_are_hex_and_results_stay_in_the_out_folder(tmp_path):
    out = tmp_path / "out"
    for name in ("quick", "peft-methods", "rank-ablation"):
        for run in sweep.load_sweep(name, {"model": "minilm", "out": str(out)}).runs:
            assert re.fullmatch(r"[0-9a-f]{12}", run.run_id)
            assert results.result_path(out, run.run_id).resolve().parent == out.resolve()
    for bad in ("../../etc/passwd", "/tmp/x", "ABC", "", "12ab/34", None):
        with pytest.raises(ValueError, match="is not a hex digest"):
            results.result_path(out, bad)
