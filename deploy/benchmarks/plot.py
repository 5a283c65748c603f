"""Draws deploy/benchmarks/reports/results.json as one PNG; run through deploy/bench-plot.

    python bench_plot.py results.json out.png

Both panels show the partial pipeline (the chaos harness's services: no verification, no
notifications); the system as deploy/up starts it is in results.md's first section.
Left panel: the latency to decision of each pipeline run as a cumulative distribution, built
from the run's latency histogram (latency in ms on a log axis; percentile on an axis that
spreads the tail: 50, 90, 99, 99.9 ... are evenly spaced), with the 50 ms p99 target.
Right panel: submitted / accepted / decided per second for each run.
Missing sections give a panel that says so instead of an error.
"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, FixedLocator, MaxNLocator, NullLocator  # noqa: E402

TARGET_P99_MS = 50.0
WIDTH_PX, HEIGHT_PX, DPI = 1600, 700, 100

SERIES = [  # (timeline key, legend label, colour)
    ("submitted", "submitted", "#1f77b4"),
    ("accepted", "accepted", "#ff7f0e"),
    ("decided", "decided", "#2ca02c"),
]
RUN_STYLES = ["-", "--", ":", "-."]
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
PERCENTILE_TICKS = [0, 50, 90, 99, 99.9, 99.99, 99.999, 99.9999]


def number(value):
    """A finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt_ms(ms):
    if ms is None:
        return "?"
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 10:
        return f"{ms:.0f} ms"
    return f"{ms:.2g} ms"


def fmt_num(value):
    v = number(value)
    if v is None:
        return "?" if value is None else str(value)
    return f"{v:g}"


def title(report):
    machine = report.get("machine")
    if not isinstance(machine, dict):
        return "benchmark report (no machine section)"

    def m(key):
        value = machine.get(key)
        if key in ("cores", "memory_gib"):
            return fmt_num(value)
        return "?" if value is None else str(value)

    return (
        f"{m('date')} · {m('cpu')}, {m('cores')} cores, {m('memory_gib')} GiB"
        f" · {m('nats_server')}"
    )


def pipeline_runs(report):
    pipeline = report.get("pipeline")
    if not isinstance(pipeline, dict):
        return []
    runs = pipeline.get("runs")
    if not isinstance(runs, list):
        return []
    return [run for run in runs if isinstance(run, dict)]


def run_name(run, index):
    return str(run.get("name") or f"run {index + 1}")


# --- latency ------------------------------------------------------------------------------


def to_y(fraction):
    """Fraction of requests -> position on the percentile axis: -log10(1 - fraction)."""
    return -math.log10(1.0 - fraction)


def cdf_points(run):
    """(latency_ms, fraction <= it) points of the run's CDF, and the sample count.

    Each bucket holds the samples in (previous upper_ms, upper_ms]. Only the bucket bounds are
    known, so the CDF is drawn through them. An upper bound beyond the run's reported max (the
    last bucket is often open-ended) is replaced by that max, where the CDF truly reaches 1.
    """
    buckets = []
    for bucket in run.get("latency_histogram") or []:
        if not isinstance(bucket, dict):
            continue
        upper, count = number(bucket.get("upper_ms")), number(bucket.get("count"))
        if upper is None and bucket.get("upper_ms") is not None:
            upper = math.inf  # e.g. "inf" or a number too large for a float
        if upper is None or count is None or count < 0:
            continue
        buckets.append((upper, count))
    buckets.sort(key=lambda b: b[0])
    total = sum(count for _, count in buckets)
    if total <= 0:
        return [], 0

    stats = run.get("latency_to_decision_ms")
    max_ms = number(stats.get("max")) if isinstance(stats, dict) else None

    points, cumulative, previous_upper = [], 0.0, None
    for upper, count in buckets:
        if count == 0 and cumulative == 0:
            previous_upper = upper
            continue
        if not points and previous_upper is not None and previous_upper > 0:
            points.append((previous_upper, 0.0))
        cumulative += count
        x = upper
        if max_ms is not None and previous_upper is not None and max_ms > previous_upper:
            x = min(x, max_ms)
        if math.isfinite(x) and x > 0:
            points.append((x, cumulative / total))
        previous_upper = upper
        if cumulative >= total:
            break
    return points, int(total)


def quantile_from_points(points, q):
    """Latency at fraction q, interpolated log-linearly between CDF points (a fallback)."""
    for (x0, f0), (x1, f1) in zip(points, points[1:]):
        if f1 >= q:
            if f1 == f0:
                return x1
            t = (q - f0) / (f1 - f0)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    return points[-1][0] if points else None


def draw_latency(ax, runs):
    drawn, x_min, x_max, y_max = 0, math.inf, 0.0, to_y(0.999)
    for index, run in enumerate(runs):
        name = run_name(run, index)
        points, total = cdf_points(run)
        stats = run.get("latency_to_decision_ms")
        stats = stats if isinstance(stats, dict) else {}
        p50, p99 = number(stats.get("p50")), number(stats.get("p99"))
        if points:
            p50 = p50 if p50 is not None else quantile_from_points(points, 0.50)
            p99 = p99 if p99 is not None else quantile_from_points(points, 0.99)
        label = f"{name}: p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}  ({total:,} requests)"
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        if not points:
            ax.plot([], [], color=colour, label=f"{name}: no latency samples")
            continue
        # A fraction of 1 has no place on this axis: put it half a sample above the last one.
        cap = 1.0 - 0.5 / total
        xs = [x for x, _ in points]
        ys = [to_y(min(f, cap)) for _, f in points]
        ax.plot(xs, ys, color=colour, linewidth=2, marker="o", markersize=2.5, label=label)
        if p99 is not None and p99 > 0:
            ax.plot([p99], [to_y(0.99)], marker="D", color=colour, markersize=6,
                    markeredgecolor="black", zorder=5)
        drawn += 1
        x_min, x_max, y_max = min(x_min, min(xs)), max(x_max, max(xs)), max(y_max, max(ys))

    ax.axvline(TARGET_P99_MS, color="black", linestyle="--", linewidth=1.2,
               label=f"target p99 {TARGET_P99_MS:g} ms")
    ax.axhline(to_y(0.99), color="grey", linestyle=":", linewidth=1)

    if drawn == 0:
        x_min, x_max = 1.0, 1000.0
        ax.text(0.5, 0.5, "no latency histogram in this report", transform=ax.transAxes,
                ha="center", va="center", fontsize=13, color="grey")
    x_min = min(x_min, TARGET_P99_MS / 2)
    x_max = max(x_max, TARGET_P99_MS * 2)
    ax.set_xscale("log")
    ax.set_xlim(x_min / 1.3, x_max * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))

    top = y_max * 1.04 + 0.05
    ax.set_ylim(0, top)
    ticks = [p for p in PERCENTILE_TICKS if to_y(p / 100) <= top]
    ax.yaxis.set_major_locator(FixedLocator([to_y(p / 100) for p in ticks]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * (1 - 10 ** -v):.6g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.text(TARGET_P99_MS * 1.06, top * 0.985, f"target p99 {TARGET_P99_MS:g} ms",
            ha="left", va="top", fontsize=9)

    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)
    ax.set_xlabel("latency from submission to decision (ms, log scale)")
    ax.set_ylabel("percentile of requests (tail spread out)")
    ax.set_title("Partial pipeline (no verification, no notifications):\n"
                 "latency to decision, cumulative (◆ = p99)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=9,
              frameon=False)


# --- throughput ---------------------------------------------------------------------------


def draw_throughput(ax, runs):
    drawn_runs, y_max = [], 0.0
    for index, run in enumerate(runs):
        timeline = [t for t in run.get("timeline") or [] if isinstance(t, dict)]
        timeline = [t for t in timeline if number(t.get("second")) is not None]
        timeline.sort(key=lambda t: number(t.get("second")))
        if not timeline:
            continue
        style = RUN_STYLES[len(drawn_runs) % len(RUN_STYLES)]
        seconds = [number(t.get("second")) for t in timeline]
        for key, _, colour in SERIES:
            values = [number(t.get(key)) for t in timeline]
            if all(v is None for v in values):
                continue
            y_max = max([y_max] + [v for v in values if v is not None])
            values = [math.nan if v is None else v for v in values]
            ax.plot(seconds, values, color=colour, linestyle=style, linewidth=1.8)
        drawn_runs.append((run_name(run, index), style))

    if not drawn_runs:
        ax.text(0.5, 0.5, "no throughput timeline in this report", transform=ax.transAxes,
                ha="center", va="center", fontsize=13, color="grey")

    ax.set_ylim(0, y_max * 1.08 if y_max > 0 else 1)
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(True, alpha=0.35)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests per second")
    ax.set_title("Partial pipeline (no verification, no notifications):\n"
                 "throughput, per second")

    series = [Line2D([], [], color=c, linewidth=2.5, label=label) for _, label, c in SERIES]
    handles = series
    if len(drawn_runs) > 1:
        handles = series + [
            Line2D([], [], color="black", linestyle=style, linewidth=1.8, label=name)
            for name, style in drawn_runs
        ]
    elif drawn_runs:
        handles = series + [Line2D([], [], linestyle="none", label=f"run: {drawn_runs[0][0]}")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3,
              fontsize=9, frameon=False)


# --- figure -------------------------------------------------------------------------------


def draw(report):
    fig = plt.figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    fig.suptitle(title(report), fontsize=13)
    runs = pipeline_runs(report)
    if not runs:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no pipeline run in this report", transform=ax.transAxes,
                ha="center", va="center", fontsize=18, color="grey")
        return fig
    left, right = fig.subplots(1, 2)
    draw_latency(left, runs)
    draw_throughput(right, runs)
    return fig


def main(argv):
    if len(argv) != 3:
        print("usage: bench_plot.py results.json out.png", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        report = json.load(f)
    if not isinstance(report, dict):
        report = {}
    fig = draw(report)
    fig.savefig(argv[2], dpi=DPI)
    print(f"wrote {argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
