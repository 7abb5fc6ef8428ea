"""A report table and its formats: markdown, LaTeX (booktabs), CSV and HTML."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    note: str = ""
    records: list[dict] = field(default_factory=list)  # raw values for CSV


# ---- cells -------------------------------------------------------------------------------------
def cell_score(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± " + ("—" if std is None else f"{100 * std:.2f}")


def cell_count(n: float | None) -> str:
    if n is None:
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def cell_int(x: float | None) -> int | None:
    return None if x is None else int(round(x))


def cell_secs(s: float | None) -> str:
    return "—" if s is None else f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def cell_bytes(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def to_markdown(t: Table) -> str:
    def cell(i: int, j: int, s: str) -> str:
        s = s.replace("|", "\\|")
        return f"**{s}**" if (i, j) in t.bold else s

    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(cell(i, j, s) for j, s in enumerate(row)) + " |" for i, row in enumerate(t.rows)]
    return "\n".join(lines + ([f"\n{t.note}"] if t.note else []))


_TEX = {"<": "$<$", ">": "$>$", "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    s = "".join(_TEX.get(ch, ch) for ch in s)
    return s.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("—", "--").replace("×", r"$\times$")


def to_latex(t: Table) -> str:
    def cell(i: int, j: int, s: str) -> str:
        return rf"\textbf{{{_tex(s)}}}" if (i, j) in t.bold else _tex(s)

    body = [" & ".join(cell(i, j, s) for j, s in enumerate(row)) + r" \\" for i, row in enumerate(t.rows)]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small",
                      r"\begin{tabular}{l" + "r" * (len(t.columns) - 1) + "}", r"\toprule",
                      " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", rf"\caption{{{_tex(t.title)}. {_tex(t.note)}}}", r"\end{table}", ""])


def to_csv(records: list[dict]) -> str:
    """Raw values (metrics unscaled, seconds, bytes), one row per record."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in records for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def to_html(t: Table) -> str:

    def cell(i: int, j: int, s: str) -> str:
        s = html.escape(s)
        return f"<td><b>{s}</b></td>" if (i, j) in t.bold else f"<td>{s}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(cell(i, j, s) for j, s in enumerate(row)) + "</tr>" for i, row in enumerate(t.rows))
    note = f"<p class=note>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


# --------------------------------------------------------------------------- report


def write_html_page(path: Path, subtitle: str, tables: list[Table], figures: list[Path]) -> Path:
    """One self-contained HTML page: the tables, then every PNG figure inlined (base64)."""
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .6em;"
           "text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}"
           "img{max-width:100%}")
    body = [f"<h1>lorabench report</h1><p>{html.escape(subtitle)}</p>"]
    body += [to_html(t) for t in tables]
    for png in figures:
        data = base64.b64encode(png.read_bytes()).decode()
        body.append(f"<figure><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(png.stem)}</figcaption></figure>")
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>lorabench report</title>"
                    f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")
    return path
