"""The table, the targets (ratio, PASS or MISS) and the chart."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._measure import Summary

Results = dict[str, dict[str, Summary]]

#: Peers that track in-flight messages and redeliver them after a worker crash.
RELIABLE_PEERS = {"arq", "saq", "dramatiq", "kombu"}

_UNITS = {
    "enqueue": "msg/s",
    "drain": "msg/s",
    "reserve_ack": "msg/s",
    "single": "msg/s",
    "batched": "msg/s",
    "add": "msg/s",
    "add_bulk": "msg/s",
    "drain_c50": "msg/s",
    "drain_c1": "msg/s",
    "round_trips": "RT/msg",
    "commands": "cmd/msg",
    "idle_cmds_per_s": "cmd/s",
    "ratio": "x",
}


def unit(metric: str) -> str:
    if metric in _UNITS:
        return _UNITS[metric]
    for suffix, name in (("_ms", "ms"), ("_us", "µs"), ("_bytes", "bytes")):
        if metric.endswith(suffix):
            return name
    return ""


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(summary: Summary) -> str:
    if summary.low == summary.high:
        return _fmt(summary.median)
    return f"{_fmt(summary.median)} [{_fmt(summary.low)}-{_fmt(summary.high)}]"


@dataclass
class Target:
    """One target of issue 9 with its measured ratio (or figure) and verdict."""

    name: str
    measured: str
    goal: str
    verdict: str  # PASS, MISS, n/a (not measured) or ref (a reference, not a target)


def _get(results: Results, name: str, metric: str) -> float | None:
    summary = results.get(name, {}).get(metric)
    return None if summary is None else summary.median


def _ratio(
    results: Results, label: str, num: tuple[str, str], den: tuple[str, str], goal: float
) -> Target:
    a, b = _get(results, *num), _get(results, *den)
    if a is None or b is None:
        return Target(label, "not measured", f">= {goal}x", "n/a")
    ratio = a / b
    verdict = "PASS" if ratio >= goal else "MISS"
    return Target(label, f"{ratio:.2f}x ({_fmt(a)} / {_fmt(b)})", f">= {goal}x", verdict)


def _reference(results: Results, label: str, num: tuple[str, str], den: tuple[str, str]) -> Target:
    """A ratio printed beside the targets for what it explains (verdict ``ref``)."""
    a, b = _get(results, *num), _get(results, *den)
    if a is None or b is None:
        return Target(label, "not measured", "none (a reference)", "n/a")
    return Target(label, f"{a / b:.2f}x ({_fmt(a)} / {_fmt(b)})", "none (a reference)", "ref")


def _peers(results: Results) -> dict[str, dict[str, Summary]]:
    return {k.removeprefix("peer."): v for k, v in results.items() if k.startswith("peer.")}


def targets(results: Results) -> list[Target]:  # noqa: PLR0912, PLR0915  # one branch per target
    rows = [
        _ratio(
            results,
            "enqueue one at a time vs Lua floor",
            ("ours.single", "enqueue"),
            ("floor.lua", "enqueue"),
            0.9,
        ),
        _ratio(
            results,
            "reserve+ack one at a time vs Lua floor",
            ("ours.single", "reserve_ack"),
            ("floor.lua", "reserve_ack"),
            0.9,
        ),
    ]
    peers = _peers(results)
    ours_enqueue = _get(results, "ours.single", "enqueue")
    python_peers = {k: v for k, v in peers.items() if k != "bullmq"}
    if python_peers and ours_enqueue is not None:
        best_name, best = max(
            ((k, v["enqueue"].median) for k, v in python_peers.items() if "enqueue" in v),
            key=lambda item: item[1],
        )
        rows.append(
            Target(
                "enqueue one at a time vs every Python peer",
                f"{ours_enqueue / best:.2f}x the fastest ({best_name}, {_fmt(best)})",
                "> 1x",
                "PASS" if ours_enqueue > best else "MISS",
            )
        )
    else:
        rows.append(
            Target("enqueue one at a time vs every Python peer", "peers not run", "> 1x", "n/a")
        )
    rows += [
        _ratio(
            results,
            "enqueue_many x100 vs pipelined floor",
            ("ours.batch", "enqueue"),
            ("floor.pipe", "enqueue"),
            0.8,
        ),
        _ratio(
            results,
            "reserve(100)+ack_many vs pipelined floor",
            ("ours.batch", "reserve_ack"),
            ("floor.pipe", "drain"),
            0.8,
        ),
        _reference(
            results,
            "enqueue_many x100 vs Lua batch floor",
            ("ours.batch", "enqueue"),
            ("floor.lua_batch", "enqueue"),
        ),
        _reference(
            results,
            "reserve(100)+ack_many vs Lua batch floor",
            ("ours.batch", "reserve_ack"),
            ("floor.lua_batch", "reserve_ack"),
        ),
        _reference(
            results,
            "our scripts, bare client: enqueue x100 vs pipelined floor",
            ("ours.bare", "enqueue"),
            ("floor.pipe", "enqueue"),
        ),
        _reference(
            results,
            "our scripts, bare client: reserve+ack x100 vs pipelined floor",
            ("ours.bare", "reserve_ack"),
            ("floor.pipe", "drain"),
        ),
    ]
    serve = _get(results, "ours.serve", "drain")
    reliable = {
        k: v["drain"].median for k, v in peers.items() if k in RELIABLE_PEERS and "drain" in v
    }
    if reliable and serve is not None:
        name, best = max(reliable.items(), key=lambda item: item[1])
        ratio = serve / best
        rows.append(
            Target(
                "serve(c=50) drain vs fastest reliable Python peer",
                f"{ratio:.2f}x ({name}, {_fmt(best)})",
                ">= 2x",
                "PASS" if ratio >= 2 else "MISS",
            )
        )
    else:
        rows.append(
            Target(
                "serve(c=50) drain vs fastest reliable Python peer", "peers not run", ">= 2x", "n/a"
            )
        )
    bull = _get(results, "peer.bullmq", "drain_c50")
    if bull is not None and serve is not None:
        rows.append(
            Target(
                "serve(c=50) drain vs BullMQ Worker(c=50)",
                f"{serve / bull:.2f}x ({_fmt(bull)})",
                "> 1x (aim)",
                "PASS" if serve > bull else "MISS",
            )
        )
    else:
        rows.append(
            Target("serve(c=50) drain vs BullMQ Worker(c=50)", "not run", "> 1x (aim)", "n/a")
        )
    floor_rt = _get(results, "floor.lua", "round_trips")
    for name, label, strict in (
        ("ours.single", "round trips/msg, one at a time", False),
        ("ours.batch", "round trips/msg, batches of 100", True),
        ("ours.serve", "round trips/msg, send + serve", True),
    ):
        rt = _get(results, name, "round_trips")
        if rt is None or floor_rt is None:
            rows.append(Target(label, "not measured", "<= floor", "n/a"))
            continue
        ok = rt < floor_rt if strict else rt <= floor_rt + 0.01
        goal = f"< {floor_rt:.2f}" if strict else f"<= {floor_rt:.2f}"
        rows.append(Target(label, f"{rt:.2f}", goal, "PASS" if ok else "MISS"))
    ours_p50 = _get(results, "latency.ours", "p50_ms")
    floor_p50 = _get(results, "latency.floor", "p50_ms")
    if ours_p50 is not None and floor_p50 is not None:
        ratio = ours_p50 / floor_p50
        rows.append(
            Target(
                "latency p50 vs BLPOP floor",
                f"{ratio:.2f}x ({ours_p50:.3f} / {floor_p50:.3f} ms)",
                "<= 1.5x",
                "PASS" if ratio <= 1.5 else "MISS",
            )
        )
    else:
        rows.append(Target("latency p50 vs BLPOP floor", "not measured", "<= 1.5x", "n/a"))
    idle = _get(results, "latency.ours", "idle_cmds_per_s")
    if idle is not None:
        rows.append(
            Target(
                "no fixed-interval polling: idle consumer",
                f"{idle:.2f} commands/s",
                "<= 1/s",
                "PASS" if idle <= 1.0 else "MISS",
            )
        )
    else:
        rows.append(
            Target("no fixed-interval polling: idle consumer", "not measured", "<= 1/s", "n/a")
        )
    trips = _get(results, "breaker", "round_trips")
    overhead = _get(results, "breaker", "overhead_us")
    if trips is not None and overhead is not None:
        rows.append(
            Target(
                "closed breaker: round trips added per call",
                f"{trips:.2f} RT, +{overhead:.0f} µs",
                "<= 1",
                "PASS" if trips <= 1.0 else "MISS",
            )
        )
    else:
        rows.append(
            Target("closed breaker: round trips added per call", "not measured", "<= 1", "n/a")
        )
    discover = _get(results, "registry", "ratio")
    if discover is not None:
        rows.append(
            Target(
                "discover: large registry vs 100 agents",
                f"{discover:.2f}x",
                "<= 1.3x",
                "PASS" if discover <= 1.3 else "MISS",
            )
        )
    else:
        rows.append(
            Target("discover: large registry vs 100 agents", "not measured", "<= 1.3x", "n/a")
        )
    return rows


def _rows(results: Results) -> list[tuple[str, str, str, str]]:
    return [
        (name, metric, cell(summary), unit(metric))
        for name, metrics in results.items()
        for metric, summary in metrics.items()
    ]


def print_table(meta: dict[str, Any], results: Results, rows: list[Target]) -> None:
    print()
    print(f"machine: {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}")
    print(
        f"python {meta['python']}, redis-py {meta['redis_py']} (hiredis: {meta['hiredis']}),"
        f" redis-server {meta['redis_server']}"
    )
    print(meta["placement"])
    for name, about in meta.get("peers", {}).items():
        detail = about.get("error") or f"n={about['n']}, " + ", ".join(
            f"{k} {v}" for k, v in about["versions"].items()
        )
        print(f"peer {name}: {detail.splitlines()[0]}")
    print(
        f"n={meta['n']} messages of {meta['payload_bytes']} bytes of JSON payload,"
        f" median of {meta['reps']} runs [min-max]"
    )
    print()
    table = _rows(results)
    widths = [
        max(len(row[i]) for row in [("measurement", "metric", "median [min-max]", "unit"), *table])
        for i in range(4)
    ]
    header = ("measurement", "metric", "median [min-max]", "unit")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    print("targets (issue 9):")
    width = max(len(t.name) for t in rows)
    for t in rows:
        goal = "a reference, not a target" if t.verdict == "ref" else f"target {t.goal}"
        print(f"  {t.verdict:<4}  {t.name.ljust(width)}  {t.measured}  ({goal})")


def markdown_table(meta: dict[str, Any], results: Results, rows: list[Target]) -> str:
    lines = [
        "| measurement | metric | median [min-max] | unit |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(results)),
        "",
        "| target | measured | goal | verdict |",
        "|---|---|---|---|",
        *(f"| {t.name} | {t.measured} | {t.goal} | **{t.verdict}** |" for t in rows),
        "",
    ]
    return "\n".join(lines)


def publish(page: Path, markdown: str, meta: dict[str, Any], out: Path) -> None:
    """Put the run into ``page`` between its ``<!-- latest-run -->`` markers.

    The figures go in as the table ``markdown_table`` made, headed by the command, the machine
    and the placement, with links to the JSON and the chart in ``out`` (next to the page).
    """
    start, end = "<!-- latest-run -->", "<!-- /latest-run -->"
    text = page.read_text()
    if text.count(start) != 1 or text.count(end) != 1:
        msg = f"{page} needs one {start} ... {end} block"
        raise ValueError(msg)
    folder = out.relative_to(page.parent).as_posix()
    load = ", ".join(f"{x:.2f}" for x in meta["load_average_start"])
    load_end = ", ".join(f"{x:.2f}" for x in meta["load_average_end"])
    peers = "".join(
        f"- peer {name}: n={about['n']}, "
        + ", ".join(f"{k} {v}" for k, v in about["versions"].items())
        + "\n"
        for name, about in meta.get("peers", {}).items()
        if "versions" in about
    )
    block = (
        f"{start}\n"
        f"Run on {meta['started']} with `{meta['command']}`:\n\n"
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}; load average"
        f" {load} at the start, {load_end} at the end\n"
        f"- python {meta['python']}, redis-py {meta['redis_py']} (hiredis: {meta['hiredis']}),"
        f" redis-server {meta['redis_server']}\n"
        f"- {meta['placement']}\n"
        f"- n={meta['n']} messages of {meta['payload_bytes']} bytes of JSON payload, median of"
        f" {meta['reps']} runs [min-max]\n"
        f"{peers}\n"
        f"{markdown}\n"
        f"The raw figures: [{folder}/results.json]({folder}/results.json).\n\n"
        f"![throughput: floors in grey, ours in blue, peers in orange]({folder}/results.png)\n"
        f"{end}"
    )
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    page.write_text(before + block + after)


_THROUGHPUT = [
    (
        "enqueue, one at a time",
        [("floor.seq", "enqueue"), ("floor.lua", "enqueue"), ("ours.single", "enqueue")],
        "enqueue",
    ),
    (
        "drain",
        [
            ("floor.seq", "drain"),
            ("floor.lua", "reserve_ack"),
            ("ours.single", "reserve_ack"),
            ("ours.serve", "drain"),
        ],
        "drain",
    ),
    (
        "batches of 100",
        [
            ("floor.pipe", "enqueue"),
            ("floor.pipe", "drain"),
            ("floor.lua_batch", "enqueue"),
            ("floor.lua_batch", "reserve_ack"),
            ("ours.batch", "enqueue"),
            ("ours.batch", "reserve_ack"),
            ("ours.bare", "enqueue"),
            ("ours.bare", "reserve_ack"),
        ],
        None,
    ),
]


_COLOURS = {"floor": "tab:gray", "ours": "tab:blue", "peer": "tab:orange"}


def chart(results: Results, meta: dict[str, Any], path: Path) -> str:
    """Bar charts of the throughputs (median, min-max error bars); returns what was done."""
    try:
        importlib.import_module("matplotlib").use("Agg")  # no display needed
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "chart skipped: matplotlib is not installed (see benchmarks/requirements.txt)"
    peers = _peers(results)
    fig, axes = plt.subplots(1, len(_THROUGHPUT), figsize=(6 * len(_THROUGHPUT), 5))
    for ax, (title, series, peer_metric) in zip(axes, _THROUGHPUT, strict=True):
        labels: list[str] = []
        values: list[float] = []
        errors: list[tuple[float, float]] = []
        entries = list(series)
        if peer_metric:
            entries += [(f"peer.{p}", peer_metric) for p in peers if peer_metric in peers[p]]
            if peer_metric == "drain" and "bullmq" in peers:
                entries += [("peer.bullmq", "drain_c50"), ("peer.bullmq", "drain_c1")]
            if peer_metric == "enqueue" and "bullmq" in peers:
                entries += [("peer.bullmq", "add")]
        elif "bullmq" in peers:
            entries += [("peer.bullmq", "add_bulk")]
        for name, metric in entries:
            summary = results.get(name, {}).get(metric)
            if summary is None:
                continue
            labels.append(f"{name}\n{metric}")
            values.append(summary.median)
            errors.append((summary.median - summary.low, summary.high - summary.median))
        ax.bar(
            range(len(values)),
            values,
            yerr=list(zip(*errors, strict=True)) if errors else None,
            capsize=3,
            color=[_COLOURS[label.split(".")[0]] for label in labels],
        )
        ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_ylabel("messages/s")
    fig.suptitle(f"n={meta['n']}, median of {meta['reps']}; {meta['placement']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"
