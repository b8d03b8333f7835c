"""The Markdown tables the benchmark prints: per queries setting, ms per meta-iteration with the ratios and peak
memory; then episode sampling against what (a) consumes."""

from __future__ import annotations

import math

ROW_TITLES = {
    "a": "(a) lightning_meta",
    "b": "(b) plain loop",
    "c": "(c) torch.func/vmap",
    "d": "(d) floor",
    "higher": "higher",
    "learn2learn": "learn2learn",
}
COMPARED_TO_B = ("b", "higher", "learn2learn")  # the rows of "fastest of (b)+peers/(a)"


def _number(cell: dict, key: str = "ms") -> float | None:
    """A row's finite measurement `key`, None where absent (the row failed, or did not run)."""
    value = cell.get(key) if cell else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.{(1 if abs(value) < 100 else 0) if digits is None else digits}f}"


def _fmt_ratio(num: float | None, den: float | None) -> str:
    """num / den as a multiple: two decimals and "×"; "–" where either is missing or den is 0."""
    return "–" if num is None or den is None or den == 0 else f"{num / den:.2f}×"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body)]


def _time_table(queries: int, cells: dict, shown: list[str]) -> list[str]:
    head = ["algorithm (preset)", *(ROW_TITLES[r] for r in shown), "(b)/(a)", "(a)/(c)", "(a)/(d)",
            "fastest of (b)+peers/(a)"]  # fmt: skip
    body = []
    for preset, cell in cells.items():
        if "skip" in cell:
            body.append([preset, f"skipped: {cell['skip']}", *["–"] * (len(head) - 2)])
            continue
        ms = {r: _number(cell["rows"].get(r, {})) for r in shown}
        fastest = [ms[r] for r in shown if r in COMPARED_TO_B and ms[r] is not None]
        a = ms.get("a")
        body.append([f"{preset} ({cell.get('describe', '')})",
                     *(_fmt(ms[r]) if r != "a" else f"**{_fmt(a)}**" for r in shown),
                     _fmt_ratio(ms.get("b"), a), _fmt_ratio(a, ms.get("c")), _fmt_ratio(a, ms.get("d")),
                     _fmt_ratio(min(fastest) if fastest else None, a)])  # fmt: skip
    return [f"\n**{queries} query image(s) per class: ms per meta-iteration (median)**\n", *_table(head, body)]


def _memory_table(queries: int, cells: dict, shown: list[str]) -> list[str]:
    if not any(_number(c, "mb") is not None for cell in cells.values() for c in cell.get("rows", {}).values()):
        return []
    head = ["algorithm (preset)", *(ROW_TITLES[r] for r in shown), "(a)/(b)"]
    body = []
    for preset, cell in cells.items():
        if "skip" not in cell:
            mb = {r: _number(cell["rows"].get(r, {}), "mb") for r in shown}
            body.append([preset, *(_fmt(mb[r], 1) for r in shown), _fmt_ratio(mb.get("a"), mb.get("b"))])
    title = f"\n**{queries} query image(s) per class: peak tensor memory of one meta-iteration (MB)**\n"
    return [title, *_table(head, body)]


def _sampling_table(results: dict) -> list[str]:
    head = ["algorithm (preset)", "queries/class", "ms per meta-batch", "episodes/s", "(a) consumes episodes/s",
            "sampling/consumption"]  # fmt: skip
    body = []
    for queries, cells in results.items():
        for preset, cell in cells.items():
            sm = cell.get("sampling")
            if sm:
                consumed = _fmt(sm.get("consumed_episodes_per_s"), 1)
                body.append([preset, str(queries), _fmt(sm["ms_per_meta_batch"], 1), _fmt(sm["episodes_per_s"]),
                             consumed, _fmt_ratio(sm.get("headroom"), 1.0)])  # fmt: skip
    return ["\n**Episode sampling (the training loader's draw, one process)**\n", *_table(head, body)]


def tables(results: dict, rows: list[str]) -> str:
    """Markdown: per queries setting, ms/meta-iteration with the ratios, then peak memory; then sampling."""
    shown = [r for r in rows if any(r in cell.get("rows", {}) for q in results.values() for cell in q.values())]
    lines = []
    for queries, cells in results.items():
        lines += _time_table(queries, cells, shown) + _memory_table(queries, cells, shown)
    return "\n".join(lines + _sampling_table(results))
