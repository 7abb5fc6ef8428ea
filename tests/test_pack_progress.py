"""What a sweep shows while a pack trains: the pack's process writes its steps done / planned
(``pack.run.progress_writer``) and the sweep's bar reads them (``sweep.local.read_progress``);
``lorabench eval`` takes ``--quiet``."""

from __future__ import annotations

import json

from lorabench import commands as cli
from lorabench.pack.run import progress_writer
from lorabench.sweep.local import read_progress


def test_the_pack_writes_its_steps_at_most_every_interval_and_always_the_last(tmp_path):
    path = tmp_path / "pack.progress.json"
    assert read_progress(path) is None  # before the first step
    write = progress_writer(path, every_s=3600)
    write(0, 12)
    write(5, 12)  # within the interval: not written
    assert read_progress(path) == (0, 12)
    write(12, 12)  # the end is always written
    assert read_progress(path) == (12, 12)
    path.write_text("{not json")
    assert read_progress(path) is None  # a torn read never breaks the bar
    path.write_text(json.dumps({"done": 3}))
    assert read_progress(path) is None


def test_eval_takes_quiet():
    args = cli.build_parser().parse_args(["eval", "some-adapter", "--task", "sst2", "--quiet"])
    assert args.quiet is True
