"""Tables: every section with absolute numbers and aproc-vs-peer ratios, then DESIGN.md's
measured targets with met / missed and by how much. Plain text for the terminal, Markdown for
docs/BENCHMARKS.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .common import Row, Section, aproc_key

RATIO_HEADER = "aproc vs this"


def _fmt(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value)


def advantage(section: Section, row: Row) -> float | None:
    """How many times better the row's same-loop aproc contender is (> 1: aproc better)."""
    if section.ratio_metric is None or row.ref is None:
        return None
    ref = section.row(row.ref)
    if ref is None:
        return None
    metric = section.metric(section.ratio_metric)
    mine, theirs = ref.values.get(metric.key), row.values.get(metric.key)
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return None
    return mine / theirs if metric.higher_is_better else theirs / mine


def section_table(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["implementation", "loop"]
    for metric in section.metrics:
        header.append(f"{metric.label} {metric.unit}".strip())
    has_spread = any(row.values.get("spread") is not None for row in section.rows)
    if has_spread:
        header.append("spread")
    if section.ratio_metric is not None:
        header.append(RATIO_HEADER)
    header.append("note")
    rows = []
    for row in section.rows:
        cells = [row.impl, row.loop]
        for metric in section.metrics:
            cells.append(_fmt(row.values.get(metric.key), metric.fmt))
        if has_spread:
            cells.append(_fmt(row.values.get("spread"), "{:.0%}"))
        if section.ratio_metric is not None:
            ratio = advantage(section, row)
            cells.append("" if ratio is None else f"{ratio:.2f}x")
        cells.append(row.note)
        rows.append(cells)
    # Drop the note column when nobody has a note.
    if all(not r[-1] for r in rows):
        header.pop()
        for r in rows:
            r.pop()
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    numeric = [i >= 2 for i in range(len(header))]
    if header and header[-1] == "note":
        numeric[-1] = False

    def line(cells: list[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            parts.append(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |"]
    aligns = ["---" if i < 2 or h == "note" else "---:" for i, h in enumerate(header)]
    out.append("| " + " | ".join(aligns) + " |")
    out.extend("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)
    return out


# --------------------------------------------------------------------------------------------
# Targets (DESIGN.md "Measured targets" and issue 4)


@dataclass
class Target:
    what: str
    requirement: str
    measured: str
    status: str  # "met" | "MISSED" | "n/a"
    margin: str


def _get(sections: dict[str, Section], name: str, key: str, metric: str) -> float | None:
    section = sections.get(name)
    if section is None:
        return None
    row = section.row(key)
    if row is None:
        return None
    return row.values.get(metric)


def _at_least(what: str, need: float, got: float | None, unit: str = "x") -> Target:
    req = f">= {need:g}{unit}"
    if got is None:
        return Target(what, req, "-", "n/a", "not measured")
    met = got >= need
    margin = f"{_pct(got / need - 1)} {'above' if met else 'below'} target"
    return Target(what, req, f"{got:.2f}{unit}", "met" if met else "MISSED", margin)


def _at_most(what: str, need: float, got: float | None, unit: str, fmt: str = "{:.2f}") -> Target:
    req = f"<= {fmt.format(need)}{unit}"
    if got is None:
        return Target(what, req, "-", "n/a", "not measured")
    met = got <= need
    if met:
        margin = f"{_pct(1 - got / need)} under target" if need else "at target"
    else:
        margin = f"{_pct(got / need - 1)} over target" if need else f"{fmt.format(got)}{unit} over"
    return Target(what, req, f"{fmt.format(got)}{unit}", "met" if met else "MISSED", margin)


def _pct(x: float) -> str:
    x = abs(x)
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


ASYNCIO_PEER = "asyncio.create_subprocess_exec [asyncio]"
RAW_SPAWN = "os.posix_spawn + os.waitpid (raw) [sync]"


def targets(sections: dict[str, Section]) -> list[Target]:
    a = aproc_key("asyncio")
    out: list[Target] = []
    if "spawn_seq" in sections:
        rate = "rate"
        aproc_rate = _get(sections, "spawn_seq", a, rate)
        asyncio_rate = _get(sections, "spawn_seq", ASYNCIO_PEER, rate)
        raw_rate = _get(sections, "spawn_seq", RAW_SPAWN, rate)
        out.append(
            _at_least("spawn one at a time: aproc/asyncio", 1.4, _ratio(aproc_rate, asyncio_rate))
        )
        out.append(
            _at_least(
                "spawn one at a time: aproc/raw posix_spawn", 0.9, _ratio(aproc_rate, raw_rate)
            )
        )
    if "spawn_50" in sections:
        aproc_rate = _get(sections, "spawn_50", a, "rate")
        asyncio_rate = _get(sections, "spawn_50", ASYNCIO_PEER, "rate")
        out.append(
            _at_least("spawn 50 at a time: aproc/asyncio", 1.3, _ratio(aproc_rate, asyncio_rate))
        )
    if "many" in sections:
        section = sections["many"]
        n = _children(section)
        for loop in ("asyncio", "uvloop", "trio"):
            threads = _get(sections, "many", aproc_key(loop), "threads")
            t = _at_most(
                f"{n} live children, aproc [{loop}]: threads (no thread per child)",
                2,
                threads,
                "",
                "{:.0f}",
            )
            if threads is not None:
                t.margin = f"{threads:.0f} thread(s) in all for {n} children"
            out.append(t)
        trio_rss = _get(sections, "many", "trio.lowlevel.open_process [trio]", "rss_mib")
        for loop in ("asyncio", "trio"):
            rss = _get(sections, "many", aproc_key(loop), "rss_mib")
            out.append(
                _at_most(
                    f"{n} live children: RSS growth aproc [{loop}] / trio's",
                    1.0,
                    _ratio(rss, trio_rss),
                    "x",
                )
            )
    if "bytes" in sections:
        key = aproc_key("asyncio", name="aproc receive(1 MiB)")
        mine = _get(sections, "bytes", key, "mib_s")
        asyncio_v = _get(sections, "bytes", "asyncio StreamReader.read(1 MiB) [asyncio]", "mib_s")
        raw_v = _get(sections, "bytes", "raw blocking os.read(64 KiB) on Popen [sync]", "mib_s")
        out.append(_at_least("stdout bytes: aproc/asyncio", 3.0, _ratio(mine, asyncio_v)))
        out.append(_at_least("stdout bytes: aproc/raw os.read loop", 0.6, _ratio(mine, raw_v)))
    if "lines" in sections:
        key = aproc_key("asyncio", name="aproc lines()")
        mine = _get(sections, "lines", key, "mlines_s")
        asyncio_v = _get(sections, "lines", "asyncio StreamReader.readline() [asyncio]", "mlines_s")
        out.append(_at_least("stdout lines: aproc/asyncio readline", 3.0, _ratio(mine, asyncio_v)))
    if "latency" in sections:
        p50 = _get(sections, "latency", a, "p50_us")
        asyncio_p50 = _get(sections, "latency", ASYNCIO_PEER, "p50_us")
        out.append(_at_most("kill -> wait() p50, aproc [asyncio]", 150, p50, " us", "{:.0f}"))
        out.append(
            _at_most(
                "kill -> wait() p50: aproc/asyncio (issue 4)", 0.6, _ratio(p50, asyncio_p50), "x"
            )
        )
    if "bigparent" in sections:
        ratio = _get(sections, "bigparent", a, "big_over_small")
        out.append(_at_most("spawn from a big parent: big/small, aproc [asyncio]", 1.2, ratio, "x"))
    if "supervisor" in sections:
        control = _get(sections, "supervisor", "empty event loop (control) [asyncio]", "wakeups")
        for name in ("aproc.Supervisor", "aproc.spawn x N + one waiter task each"):
            wakeups = _get(sections, "supervisor", f"{name} [asyncio]", "wakeups")
            extra = None if wakeups is None or control is None else wakeups - control
            what = f"at rest, {name} [asyncio]: wake-ups beyond the empty loop's"
            t = _at_most(what, 0, extra, "", "{:.0f}")
            if wakeups is None:
                row = sections["supervisor"].row(f"{name} [asyncio]")
                t.margin = row.note if row is not None and row.note else "not measured"
            out.append(t)
    return out


def _children(section: Section) -> str:
    title = section.title
    return title.split(" ", 1)[0] if title[:1].isdigit() else "N"


def targets_table(items: list[Target]) -> tuple[list[str], list[list[str]]]:
    header = ["target", "requirement", "measured", "status", "margin"]
    rows = [[t.what, t.requirement, t.measured, t.status, t.margin] for t in items]
    return header, rows


# --------------------------------------------------------------------------------------------
# Whole reports


def machine_lines(info: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return [
        f"mode: {info['mode']}   date: {info['date']}",
        f"machine: {info['nproc']} CPUs ({info['cpus_usable']} usable) {info['cpu']}, "
        f"{info['mem_gib']} GiB RAM, Linux {info['kernel']}, {info['libc']}",
        f"python: {info['python']}; {versions}",
        f"aproc default reaper: {info['aproc_default_reaper']}; "
        f"pipe-max-size: {info['pipe_max_size']}; "
        "structlog: filtering bound logger at WARNING (aproc's debug events are no-ops)",
    ]


def render_text(info: dict[str, Any], sections: list[Section], tgts: list[Target]) -> str:
    out = machine_lines(info)
    for section in sections:
        out.append("")
        out.append(f"== {section.title}  [{section.name}, {section.seconds:.0f} s] ==")
        header, rows = section_table(section)
        out.extend(_text_table(header, rows))
        for note in section.notes:
            out.append(f"  * {note}")
        legend = _legend(section)
        if legend:
            out.append(f"  * {legend}")
        if section.leftovers:
            out.append(f"  ! LEFT BEHIND (killed and reaped by the runner): {section.leftovers}")
    if tgts:
        out.append("")
        out.append("== DESIGN.md targets (aproc on asyncio unless stated) ==")
        header, rows = targets_table(tgts)
        out.extend(_text_table(header, rows))
    return "\n".join(out)


def render_markdown(info: dict[str, Any], sections: list[Section], tgts: list[Target]) -> str:
    out = [f"- {line}" for line in machine_lines(info)]
    for section in sections:
        out.append("")
        out.append(f"### {section.title}")
        out.append("")
        header, rows = section_table(section)
        out.extend(_md_table(header, rows))
        out.append("")
        for note in section.notes:
            out.append(f"- {note}")
        legend = _legend(section)
        if legend:
            out.append(f"- {legend}")
        if section.leftovers:
            out.append(f"- **left behind** (cleaned up by the runner): {section.leftovers}")
    if tgts:
        out.append("")
        out.append("### DESIGN.md targets")
        out.append("")
        header, rows = targets_table(tgts)
        out.extend(_md_table(header, rows))
    return "\n".join(out) + "\n"


def _legend(section: Section) -> str | None:
    if section.ratio_metric is None:
        return None
    metric = section.metric(section.ratio_metric)
    better = "higher" if metric.higher_is_better else "lower"
    return (
        f"'{RATIO_HEADER}': the aproc row on the same loop (aproc on asyncio for the sync "
        f"baselines) compared on '{metric.label}' ({better} is better); > 1 means aproc wins"
    )


def to_json(info: dict[str, Any], sections: list[Section], tgts: list[Target]) -> dict[str, Any]:
    return {
        "machine": info,
        "sections": [s.to_json() for s in sections],
        "targets": [asdict(t) for t in tgts],
    }
