"""The documentation site builds with ``mkdocs build --strict`` (mkdocs.yml): a broken link, a page
missing from the tree, a marker that names nothing or a docstring mkdocstrings cannot render stops
the build, and so fails this test. mkdocs, mkdocs-material and mkdocstrings-python are in the
``test`` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], check=False, cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_strict(tmp_path):
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    site = tmp_path / "site"
    variants = (site / "guide" / "variants" / "index.html").read_text()
    assert 'id="dora"' in variants and "2402.09353" in variants  # generated at build time
    api = (site / "reference" / "api" / "index.html").read_text()
    assert 'id="lorabench.apply"' in api and 'id="lorabench.export_peft"' in api  # rendered from docstrings
    assert (site / "quick" / "report" / "index.html").is_file()  # the study reports build as pages
    assert not (site / "quick" / "runs").exists() and not list(site.glob("*/**/run-*.json"))  # run artefacts stay out


def test_a_broken_link_or_an_unknown_object_fails_the_build(tmp_path):
    """The same strictness on a one-page site: each fault alone stops the build."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config.pop("hooks"), config.pop("nav")
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    for fault, text in [("missing.md", "See [the missing page](missing.md)."),
                        ("lorabench.no_such_function", "::: lorabench.no_such_function")]:
        folder = tmp_path / fault
        (folder / "docs").mkdir(parents=True)
        (folder / "docs" / "index.md").write_text(f"# A page\n\n{text}\n")
        (folder / "mkdocs.yml").write_text(yaml.safe_dump(config))
        done = mkdocs_build(folder / "mkdocs.yml", folder / "site")
        assert done.returncode != 0 and fault in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
