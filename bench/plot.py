"""The B1 concurrency sweep and its plot: patients/s at C = 1..64 against the ideal C/L."""

from __future__ import annotations

from pathlib import Path

from bench import data, env
from bench.core import expect
from bench.patients import LATENCY_MS, patients_config, push

CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)


def sweep(
    rows: int, folder: Path, concurrencies: tuple[int, ...] = CONCURRENCIES
) -> dict[int, float]:
    """Patients/s of a first push of `rows` new patients at each concurrency (L = 20 ms)."""
    export = data.write_patients(folder / "sweep.csv", rows)
    rates: dict[int, float] = {}
    with env.served_sandbox(LATENCY_MS) as sandbox:
        for concurrency in concurrencies:
            with env.database("sqlite", folder) as db_url:
                config = patients_config(
                    base_url=sandbox.base_url,
                    db_url=db_url,
                    csv_path=export,
                    concurrency=concurrency,
                )
                counts, elapsed = push(env.load_bench_settings(folder, config, env.API_KEY))
            expect(counts["created"] + counts["updated"] == rows, counts)
            rates[concurrency] = rows / elapsed
    return rates


def draw(rates: dict[int, float], path: Path, *, rows: int, polling: float | None = None) -> Path:
    """Plot measured patients/s and the ideal C/L against C (log-log); save a PNG.

    `polling` is B5's calls/s (list and 74 KB detail GETs) at C = 16, drawn as one point:
    the same client and sandbox, with the poller's per-detail work on top.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(rates)
    ideal = [c / (LATENCY_MS / 1000) for c in levels]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    axes.plot(levels, ideal, "--", color="grey", label=f"ideal C/L (L = {LATENCY_MS:g} ms)")
    axes.plot(levels, [rates[c] for c in levels], "o-", color="tab:blue", label="measured")
    if polling is not None:
        axes.plot(
            [16], [polling], "s", color="tab:orange", label="B5 polling, calls/s (74 KB details)"
        )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(levels, [str(c) for c in levels])
    axes.set_xlabel("max_concurrency C")
    axes.set_ylabel("patients pushed (B5: API calls) per second")
    axes.set_title(f"B1: first push of {rows:,} patients, served sandbox, 2 cores")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
