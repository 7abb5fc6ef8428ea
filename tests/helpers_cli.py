"""The one check of a refused command line: exit 2, one ``error:`` line naming the problem, no traceback."""

from __future__ import annotations

from lorabench import commands as cli


def refused(argv: list[str], capsys, *fragments: str) -> str:
    """Run ``lorabench argv``: exit 2, one ``error: `` line holding every fragment; returns the line."""
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
