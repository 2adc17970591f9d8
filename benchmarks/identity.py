"""Identity benchmark: full and incremental builds vs DuckDB scanning the same events.

    python benchmarks/identity.py --events 20000000      # ~1 M persons

The demo file (benchmarks/data/demo-<events>.jsonl, made by benchmarks/ingest.py or here) is
split: all but the last 1 % of its lines are imported once into a cached workspace
(benchmarks/data/identity-<events>.duckdb); the last 1 % is the "new events" file. Each
measurement runs in its own process on a fresh copy of the cached workspace:

* ``scan``: DuckDB's irreducible read, ``SELECT anonymous_id, user_id, count(*) FROM events
  GROUP BY ALL`` (the peer);
* ``full``: ``ws.build(full=True)``;
* ``incremental``: after a full build, import the 1 % and time ``ws.build()``.

Wall time, CPU time (user + system, all threads) and peak RSS are reported for each, with
the ratios, and written to
benchmarks/results/identity-<events>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"

STEP = r"""
import json, resource, sys, time
import bowknot
from bowknot.imports import import_file
db, step, extra = sys.argv[1], sys.argv[2], sys.argv[3]
ws = bowknot.connect(db)
out = {}

def cpu():  # user + system seconds of this process (all its threads)
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

if step == "scan":
    con = ws.store.cursor()
    t, c = time.perf_counter(), cpu()
    n = con.execute("SELECT count(*) FROM (SELECT anonymous_id, user_id, count(*) FROM events "
                    "GROUP BY ALL)").fetchall()[0][0]
    out = {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "groups": n}
elif step == "full":
    t, c = time.perf_counter(), cpu()
    r = ws.build(full=True)
    out = {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "build": r.to_dict()}
elif step == "incremental":
    ws.build(full=True)
    import_file(ws, extra)
    t, c = time.perf_counter(), cpu()
    r = ws.build()
    out = {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "build": r.to_dict()}
out["persons"] = ws.sql("SELECT count(*) AS n FROM persons")[0]["n"]
out["events"] = ws.sql("SELECT count(*) AS n FROM events")[0]["n"]
ws.close()
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out, default=str))
"""


def prepare(events: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE))
    from ingest import demo_file  # the same cached demo file as the ingest benchmark

    source = demo_file(events)
    base = DATA / f"identity-{events}.duckdb"
    tail = DATA / f"identity-{events}-new.jsonl"
    if base.exists() and tail.exists():
        return base, tail
    head = DATA / f"identity-{events}-base.jsonl"
    lines = int(subprocess.run(["wc", "-l", str(source)], capture_output=True, text=True,
                               check=True).stdout.split()[0])
    keep = lines - lines // 100
    with open(head, "wb") as h:
        subprocess.run(["head", "-n", str(keep), str(source)], stdout=h, check=True)
    with open(tail, "wb") as f:
        subprocess.run(["tail", "-n", str(lines - keep), str(source)], stdout=f, check=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bowknot", "import", str(head), "--db",
                    str(base)], check=True)
    print(f"imported {keep:,} events in {time.perf_counter() - t:.0f} s", flush=True)
    head.unlink()
    return base, tail


def run_step(base: Path, tail: Path, step: str) -> dict[str, Any]:
    work = DATA / f"identity-work-{os.getpid()}.duckdb"
    shutil.copyfile(base, work)
    try:
        proc = subprocess.run([sys.executable, "-c", STEP, str(work), step, str(tail)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{step} failed:\n{proc.stderr}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        for p in (work, Path(str(work) + ".wal")):
            p.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the three steps (each step's median kept)")
    args = ap.parse_args()
    base, tail = prepare(args.events)
    results: dict[str, Any] = {"events": args.events, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version()}}
    steps = ("scan", "full", "incremental")
    # Rounds of the three steps, not each step's runs in a row: the host's speed drifts by
    # ~10 % over minutes, and a drift then moves every step, not one step's median.
    runs: dict[str, list[dict[str, Any]]] = {step: [] for step in steps}
    for n in range(args.repeat):
        for step in steps:
            r = run_step(base, tail, step)
            runs[step].append(r)
            if args.repeat > 1:
                print(f"  round {n + 1}: {step:12s} {r['seconds']:8.2f} s  "
                      f"{r['cpu_seconds']:7.2f} CPU-s", flush=True)
    for step in steps:
        ordered = sorted(runs[step], key=lambda r: r["seconds"])
        results[step] = ordered[len(ordered) // 2]
        results[step]["runs_seconds"] = [r["seconds"] for r in runs[step]]
        r = results[step]
        print(f"{step:12s} {r['seconds']:8.2f} s  {r['cpu_seconds']:7.2f} CPU-s  "
              f"max RSS {r['max_rss_mb']:7.0f} MB  persons {r['persons']:,}", flush=True)
    scan, full, inc = (results[s]["seconds"] for s in ("scan", "full", "incremental"))
    results["ratios"] = {"full_vs_scan": full / scan, "incremental_vs_full": inc / full}
    cpus = [results[s]["cpu_seconds"] for s in ("scan", "full", "incremental")]
    results["cpu_ratios"] = {"full_vs_scan": cpus[1] / cpus[0],
                             "incremental_vs_full": cpus[2] / cpus[1]}
    print(f"full build = {full / scan:.1f}x the scan; incremental (1 % new) = "
          f"{100 * inc / full:.1f} % of the full build")
    print(f"CPU time: full build = {cpus[1] / cpus[0]:.1f}x the scan; incremental = "
          f"{100 * cpus[2] / cpus[1]:.1f} % of the full build (a steadier measure on a "
          "shared machine)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"identity-{args.events}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"written {out}")
    _ = resource  # peak memory is measured inside each step's process


if __name__ == "__main__":
    main()
