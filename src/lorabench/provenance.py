"""One result per run id, and what data each result read: the checks a report makes before it counts.

A run id is the hash of the resolved config and the data fingerprint (``ids.run_id``), so two
results under one id should be one run: copies of one file (two folders holding the same sweep),
or reruns of it. ``one_per_id`` keeps one and says what it found:

- copies (the same status, metrics and examples read) count once, silently;
- the same config and data but different measurements (a rerun, another machine) are flagged,
  and the result finished last is kept;
- different data or config under one id is refused (``ReportError`` names both files): it can
  only come from a result edited by hand or written by another program, and no table can use it;
- a result whose id is not the one its own config and data give is flagged (edited by hand);
- schema-1 results (written before the data was part of the id) carry no data record: two of
  them that disagree under one id are flagged, since nothing says whether they read the same data.

``data_notes`` flags a task whose runs read more than one data version (another folder's files,
the hub, results from before the data was recorded), which one table would otherwise mix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import results
from .data.fingerprint import short
from .errors import ReportError


def measured(result: dict) -> str:
    """What a run measured, as canonical JSON: equal for copies of one result file."""
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    return results.canonical([result.get("status"), (result.get("best") or {}).get("metrics"),
                              (result.get("final") or {}).get("metrics"), data.get("examples")])


def _computed(result: dict) -> str:
    """What a run was asked to compute: its config and data fingerprint."""
    return results.canonical([result.get("config"), results.planned_data(result)])


def one_per_id(found: Iterable[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """``(path, result)`` pairs with one result per run id, and notes on what was dropped or is suspect."""
    groups: dict[str, list[tuple[Path, dict]]] = {}
    notes = []
    for path, r in found:
        groups.setdefault(r["run_id"], []).append((path, r))
        if r["run_id"] != results.expected_id(r):
            notes.append(f"{path}: run id {r['run_id']} is not the one its config and data give "
                         f"({results.expected_id(r)}); was it edited? It is counted as it stands")
    kept = []
    for rid, group in groups.items():
        (first_path, first), *others = group
        for path, r in others:
            if _computed(r) != _computed(first):
                raise ReportError(f"{first_path} and {path} are both run {rid} but record different "
                                  f"{'data' if r.get('config') == first.get('config') else 'configs'}: they are not "
                                  "the same run; move one of them out of the results folder")
        distinct = {measured(r) for _, r in group}
        latest_path, latest = max(group, key=lambda pr: (str(pr[1].get("finished_at") or ""), str(pr[0])))
        if len(distinct) > 1:
            old = " (schema 1: nothing records whether they read the same data)" if latest["schema_version"] < 2 else ""
            notes.append(f"run {rid} has {len(group)} results that measured different things ("
                         + ", ".join(str(p) for p, _ in group) + f"){old}; kept the one finished last, {latest_path}")
        kept.append((latest_path, latest))
    kept.sort(key=lambda pr: str(pr[0]))
    return kept, notes


def data_notes(found: Iterable[tuple[Path, dict]]) -> list[str]:
    """One note per task whose results read more than one data version."""
    versions: dict[str, dict[str, int]] = {}
    for _, r in found:
        counts = versions.setdefault(str(r["task"]), {})
        tag = short(r.get("data"))
        counts[tag] = counts.get(tag, 0) + 1
    return [f"{task}: the runs read {len(counts)} data versions ("
            + ", ".join(f"{tag}: {n} run{'s' * (n != 1)}" for tag, n in sorted(counts.items()))
            + "); configurations on different data are kept apart (the data column shows which), but the "
              "best table chooses among them: report one data version per folder"
            for task, counts in sorted(versions.items()) if len(counts) > 1]
