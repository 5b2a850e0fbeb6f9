"""A batch's summary: ``summary.csv`` (one row per pair, ``batch.SUMMARY_COLUMNS``) and ``report.html``,
a table sortable by any column with each pair's QC picture, the pairs that need a look first.

"Needs a look" orders the pairs that failed or did not run first, then the registered ones by the worst
of their ranks on the lowest similarity gain (local NCC at the end minus after the pre-alignment), the
highest folding and, with labels, the lowest Dice (ties: the sum of the ranks): the first rows hold the
worst few pairs of each measure, and the column "why" says which rank put a pair there.
"""

from __future__ import annotations

import contextlib
import csv
import html
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from .batch_pair import SUMMARY_COLUMNS

#: (column, True when low values are bad, what a rank on it means)
CONCERNS = (
    ("similarity_gain", True, "similarity gain"),
    ("folding_percent", False, "folding"),
    ("dice", True, "Dice"),
)


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.rlreg-{os.getpid()}-partial")
    try:
        temporary.write_text(text, encoding="utf-8", newline="")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def write_summary_csv(path: str | Path, records: Sequence[dict]) -> None:
    """One row per pair, in the given order; empty cells for what was not measured."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if record.get(k) is None else record[k] for k in SUMMARY_COLUMNS})
    _atomic_write(Path(path), buffer.getvalue())


def read_summary_csv(path: str | Path) -> list[dict]:
    """The rows of a summary.csv (values as text, empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def worst_first(records: Sequence[dict]) -> list[tuple[dict, str]]:
    """``(record, why)`` in the order a user should look at them (see the module doc)."""
    problems = [r for r in records if r.get("status") not in ("done", "skipped")]
    problems.sort(key=lambda r: (r.get("status") != "failed", str(r.get("id"))))
    registered = [r for r in records if r.get("status") in ("done", "skipped")]
    ranks: dict[int, list[tuple[int, str]]] = {id(r): [] for r in registered}
    for column, low_is_bad, name in CONCERNS:
        scored = [(v, r) for r in registered if (v := _number(r.get(column))) is not None]
        scored.sort(key=lambda item: item[0] if low_is_bad else -item[0])
        for position, (_, record) in enumerate(scored):
            word = "lowest" if low_is_bad else "highest"
            ranks[id(record)].append((position, f"{word} {name} #{position + 1}"))

    def key(record):
        positions = ranks[id(record)]
        if not positions:
            return (len(registered), 0, str(record.get("id")))
        return (min(p for p, _ in positions), sum(p for p, _ in positions), str(record.get("id")))

    registered.sort(key=key)
    ordered = [(r, r.get("status") or "") for r in problems]
    for record in registered:
        positions = ranks[id(record)]
        ordered.append((record, min(positions)[1] if positions else ""))
    return ordered


_COLUMNS = (
    ("id", "pair", False),
    ("status", "status", False),
    ("why", "needs a look", False),
    ("similarity_before", "NCC before", True),
    ("similarity_after", "NCC after", True),
    ("similarity_gain", "NCC gain", True),
    ("folding_percent", "folding %", True),
    ("dice_before", "Dice before", True),
    ("dice", "Dice", True),
    ("seconds", "seconds", True),
    ("peak_memory_gib", "peak GiB", True),
    ("device", "device", False),
    ("error", "error", False),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; user-select: none; }
th.sorted-up::after { content: " \\25B2"; } th.sorted-down::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, tr.not-run td { background: #fde8e8; }
img { height: 96px; display: block; }
td.error { max-width: 36em; font-family: monospace; font-size: 12px; }
"""

_SCRIPT = """
document.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const up = !th.classList.contains("sorted-up");
  document.querySelectorAll("th").forEach(h => h.classList.remove("sorted-up", "sorted-down"));
  th.classList.add(up ? "sorted-up" : "sorted-down");
  const value = row => row.cells[column].dataset.v;
  const rows = Array.from(body.rows);
  const numeric = rows.every(r => value(r) === "" || !isNaN(parseFloat(value(r))));
  rows.sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return up ? order : -order;
  });
  rows.forEach(r => body.appendChild(r));
}));
"""


def write_report_html(path: str | Path, records: Sequence[dict], title: str = "rlreg batch") -> None:
    """The report page (next to the pairs' folders: thumbnails and links are relative)."""
    ordered = worst_first(records)
    counts = {
        s: sum(1 for r in records if r.get("status") == s) for s in ("done", "skipped", "failed", "not run")
    }
    seconds = sorted(v for r in records if r.get("status") == "done" and (v := _number(r.get("seconds"))))
    median = f"; median {seconds[len(seconds) // 2]:.1f} s per pair run" if seconds else ""
    head = ["<th>#</th>", "<th>QC</th>"] + [f"<th>{html.escape(label)}</th>" for _, label, _ in _COLUMNS]
    rows = []
    for rank, (record, why) in enumerate(ordered, 1):
        ident = str(record.get("id"))
        folder = quote(ident)
        picture = ""
        if record.get("status") in ("done", "skipped"):
            picture = f'<a href="{folder}/qc.png"><img loading="lazy" src="{folder}/qc.png" alt="QC"></a>'
        cells = [f'<td class="num" data-v="{rank}">{rank}</td>', f'<td data-v="">{picture}</td>']
        for key, _, numeric in _COLUMNS:
            value = why if key == "why" else record.get(key)
            value = "" if value is None else value
            shown = html.escape(
                f"{float(value):.4g}" if numeric and _number(value) is not None else str(value)
            )
            if key == "id" and record.get("status") in ("done", "skipped"):
                shown = f'<a href="{folder}/">{shown}</a>'
            css = "num" if numeric else ("error" if key == "error" else "")
            cells.append(f'<td class="{css}" data-v="{html.escape(str(value), quote=True)}">{shown}</td>')
        status = str(record.get("status") or "").replace(" ", "-")
        rows.append(f'<tr class="{status}">{"".join(cells)}</tr>')
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(records)} pairs: {html.escape(summary)}{html.escape(median)}. The pairs that need a look come first
(failed, then the lowest similarity gain, highest folding and lowest Dice); click a column to sort by it,
a picture to open it.</p>
<table><thead><tr>{"".join(head)}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    _atomic_write(Path(path), page)
