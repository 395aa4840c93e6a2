"""Studio's list pages at scale: the trial-components page over 50,000 rows against the same
page over 50 rows, measured in the same run.

    .venv/bin/python benchmarks/studio_lists.py [--rows 50000] [--small 50] [--repeat 15]

Two servers on SQLite, one per store size, each filled through the API (CreateTrialComponent
from a thread pool, and every 10th component associated with one experiment's trial). Each page
is fetched over HTTP as a browser fetches it (unsigned GET of /studio/...), after two warm-ups;
the figure is the median time to the last byte of the rendered HTML. Pages:

- first page:  /studio/trial-components            (newest first, 25 rows)
- filtered:    /studio/trial-components?experiment=  (the experiment's components, 25 rows)
- by name:     /studio/trial-components?sort=Name    (sorted by name, 25 rows)

Target (issue 9): each page under a second, and within 3x of the same page over 50 rows.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import Salvia, running_salvia

EXPERIMENT = "bench-experiment"
TRIAL = "bench-trial"
PAGES = {
    "first page": "/studio/trial-components",
    "filtered": f"/studio/trial-components?experiment={EXPERIMENT}",
    "by name": "/studio/trial-components?sort=Name&order=Ascending",
}


def fill(salvia: Salvia, rows: int, threads: int = 8) -> float:
    """`rows` trial components through the API; every 10th joins the experiment's trial."""
    sm = salvia.client("sagemaker")
    sm.create_experiment(ExperimentName=EXPERIMENT)
    sm.create_trial(TrialName=TRIAL, ExperimentName=EXPERIMENT)
    local = threading.local()

    def client() -> Any:
        if not hasattr(local, "sm"):
            local.sm = salvia.client("sagemaker")
        return local.sm

    def create(index: int) -> None:
        name = f"component-{index:06d}"
        client().create_trial_component(
            TrialComponentName=name,
            Parameters={"index": {"NumberValue": index}},
            Status={"PrimaryStatus": "Completed"},
        )
        if index % 10 == 0:
            client().associate_trial_component(TrialComponentName=name, TrialName=TRIAL)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(create, range(rows), chunksize=64):
            pass
    return time.perf_counter() - started


def page_seconds(url: str, path: str, repeat: int) -> float:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    times = []
    try:
        for attempt in range(repeat + 2):
            started = time.perf_counter()
            connection.request("GET", path, headers={"Accept": "text/html"})
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200 or b'id="list"' not in body:
                raise RuntimeError(f"{path}: HTTP {response.status}\n{body[:500]!r}")
            if attempt >= 2:
                times.append(elapsed)
    finally:
        connection.close()
    return statistics.median(times)


def measure(rows: int, repeat: int) -> tuple[float, dict[str, float]]:
    with running_salvia() as salvia:
        filled = fill(salvia, rows)
        return filled, {
            name: page_seconds(salvia.url, path, repeat) for name, path in PAGES.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    small_fill, small = measure(args.small, args.repeat)
    print(f"filled {args.small} trial components in {small_fill:.1f} s", flush=True)
    large_fill, large = measure(args.rows, args.repeat)
    print(
        f"filled {args.rows} trial components in {large_fill:.1f} s "
        f"({args.rows / large_fill:.0f}/s through the API)"
    )
    print()
    print(f"{'page':<12} {args.rows:>9} rows {args.small:>6} rows   ratio   target")
    for name in PAGES:
        ratio = large[name] / small[name]
        met = "met" if large[name] < 1.0 and ratio <= 3.0 else "NOT met"
        print(
            f"{name:<12} {large[name] * 1000:>10.1f} ms {small[name] * 1000:>7.1f} ms "
            f"{ratio:>6.2f}x   {met} (< 1 s and <= 3x)"
        )


if __name__ == "__main__":
    main()
