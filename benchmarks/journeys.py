"""Journeys benchmark: bowknot's journey analytics vs hand-written DuckDB SQL (the limit),
Polars, pandas and retentioneering 5.x, with a correctness gate.

    python benchmarks/journeys.py --tier S            # 2 M events, all peers
    python benchmarks/journeys.py --tier M            # 20 M events, the goals' tier
    python benchmarks/journeys.py --tier L --peers duckdb_sql,bowknot,polars \\
        --memory-limit 16GB                           # 100 M events

Data (cached in benchmarks/data/, git-ignored): the demo story's events imported into a
workspace and built (``journeys-<events>.duckdb``), and a flat, typed Parquet export of its
person events in shuffled order (``journeys-<events>.parquet``) for the other peers. The
questions and the peers are in benchmarks/journeys_peers.py (performance-anchors.md §7).

Each peer runs in its own process with two threads: load once (timed), then per question a
cold first run, one warm-up, and the median of ``--repeat`` runs (a question whose cold run
took over 30 s: no warm-up, median of 2); peak RSS per peer. The gate
normalises (sorts, rounds) and hashes every answer; each must equal the hand-written SQL's
answer to the same question, else the run fails. Results: benchmarks/results/journeys-<tier>
.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from journeys_peers import PEERS, QUESTIONS, normal, supported  # noqa: E402

DATA = HERE / "data"
RESULTS = HERE / "results"
CACHED = Path("/work/main/benchmarks/data")  # read-only copies made by other benchmarks
TIERS = {"XS": 200_000, "S": 2_000_000, "M": 20_000_000, "L": 100_000_000}
REPEAT = {"XS": 1, "S": 5, "M": 5, "L": 3}
SEED = 7
REFERENCE = "duckdb_sql"
SLOW_SECONDS = 30.0

# The typed export the peers read: the same person events bowknot analyses.
EXPORT = """COPY (
    SELECT person_id, ts, seq, event,
           coalesce(json_extract_string(properties, '$.channel'),
                    json_extract_string(context, '$.campaign.source')) AS channel,
           coalesce(json_extract_string(properties, '$.campaign_id'),
                    json_extract_string(context, '$.campaign.name')) AS campaign,
           json_extract_string(context, '$.campaign.name') AS utm_campaign,
           TRY_CAST(json_extract_string(properties, '$.score') AS DOUBLE) AS score
    FROM ({events}) ORDER BY hash(seq)
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)"""


def export(ws: Any, path: Path) -> None:
    """Write the flat export of ``ws``'s person events to ``path`` (Parquet, shuffled)."""
    import ibis

    from bowknot.journeys.engine import normalised_events

    sql = ibis.to_sql(normalised_events(ws), dialect="duckdb")
    tmp = path.with_suffix(".tmp")
    ws.store.connection.execute(EXPORT.format(events=sql, path=tmp))
    tmp.rename(path)


def demo_source(events: int, folder: Path = DATA) -> tuple[Path, bool]:
    """The demo's JSON Lines for ``events`` events, and whether it is the harness's own
    gzipped one (written by this or an earlier run), which the import may remove.

    A new one is written gzipped (level 1: about 15 % of the plain size; at 100 M events
    7 GB instead of 46 GB, which did not fit the disk); the importer reads it as it is."""
    for where in (folder, DATA, CACHED):
        for name in (f"demo-{events}.jsonl", f"demo-{events}.jsonl.gz"):
            if (where / name).exists():
                return where / name, name.endswith(".gz")
    from bowknot import demo

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"demo-{events}.jsonl.gz"
    tmp = folder / f"demo-{events}.tmp.jsonl.gz"
    t = time.perf_counter()
    demo.write_jsonl(tmp, events=events, seed=SEED)
    tmp.rename(path)
    print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path, True


def prepare(events: int, folder: Path = DATA,
            memory_limit: str | None = None) -> tuple[Path, Path]:
    """The built workspace and the Parquet export for ``events`` demo events (cached), made
    under ``memory_limit`` (DuckDB's, like the peers'; its default is 80 % of RAM)."""
    import bowknot
    from bowknot import journal
    from bowknot.imports import import_file

    folder.mkdir(parents=True, exist_ok=True)
    limit = {"memory_limit": memory_limit} if memory_limit else {}
    # Named after the journal's layout: a workspace cached by code with another layout is
    # copied (never changed in place: other branches' runs read it) and its journal rewritten.
    db = folder / f"journeys-{events}-j{journal.LAYOUT}.duckdb"
    parquet = folder / f"journeys-{events}.parquet"
    older = [p for where in (folder, CACHED)
             for p in sorted(where.glob(f"journeys-{events}-j*.duckdb"), reverse=True)
             + [where / f"journeys-{events}.duckdb"]
             if p.exists() and not p.name.endswith(".tmp.duckdb") and p != db]
    if not db.exists() and older:
        tmp = db.with_suffix(".tmp.duckdb")
        shutil.copyfile(older[0], tmp)
        tmp.rename(db)
    if not db.exists():
        tmp = db.with_suffix(".tmp.duckdb")
        tmp.unlink(missing_ok=True)
        ws = bowknot.connect(str(tmp), **limit)
        source, written = demo_source(events, folder)
        t = time.perf_counter()
        import_file(ws, str(source))
        print(f"imported in {time.perf_counter() - t:.0f} s", flush=True)
        ws.close()
        tmp.rename(db)
        if written and events > TIERS["M"]:
            # The workspace is the cache (15 GB at L); the file (7 GB at L) can be written
            # again, and both did not fit the disk beside the Parquet export.
            source.unlink()
    import bowknot as bk

    ws = bk.connect(str(db), **limit)
    try:
        t = time.perf_counter()
        r = ws.build()  # brings the derived tables up to this code's version
        if not r.skipped:
            print(f"built ({r.kind}) in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        if journal.refresh(ws):
            print(f"journal written in {time.perf_counter() - t:.1f} s", flush=True)
        if not parquet.exists():
            export(ws, parquet)
    finally:
        ws.close()
    return db, parquet


# -- one peer, in its own process ------------------------------------------------------------
def child(peer_name: str, parquet: str, workspace: str, questions: list[str],
          repeat: int) -> dict[str, Any]:
    peer = PEERS[peer_name]()
    t = time.perf_counter()
    peer.load(parquet, workspace)
    out: dict[str, Any] = {"peer": peer_name, "load_seconds": time.perf_counter() - t,
                           "questions": {}}
    for q in questions:
        if not hasattr(peer, q):
            continue
        fn = getattr(peer, q)
        t = time.perf_counter()
        raw = fn()
        cold = time.perf_counter() - t
        # A slow peer (a minute or more a run: pandas, retentioneering at M) gets no separate
        # warm-up and a median of fewer runs, so the run ends the same day; ``runs`` says how
        # many were timed.
        slow = cold > SLOW_SECONDS
        if not slow:
            fn()  # warm-up
        times, cpu = [], []
        for _ in range(min(repeat, 2) if slow else repeat):
            t, c = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)  # every thread of the process
        rows = normal(q, raw)
        text = json.dumps(rows, default=str)
        out["questions"][q] = {
            "cold_seconds": cold, "seconds": statistics.median(times), "runs": times,
            "cpu_seconds": statistics.median(cpu),
            "rows": len(rows), "hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            "answer": rows if len(text) < 20_000 else None,
        }
    out["peak_rss_mb"] = peak_rss_mb()
    out["versions"] = versions(peer_name)
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM starts afresh at exec; ru_maxrss would include the
    parent's peak (Linux keeps it across execve)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions(peer_name: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {"duckdb_sql": ["duckdb"], "bowknot": ["duckdb", "ibis-framework"],
             "polars": ["polars"], "pandas": ["pandas", "numpy"],
             "retentioneering": ["retentioneering", "pandas", "duckdb"]}[peer_name]
    found = {}
    for n in names:
        try:
            found[n] = version(n)
        except PackageNotFoundError:
            found[n] = "missing"
    return found


def run_peer(peer: str, parquet: Path, db: Path, questions: list[str], repeat: int,
             memory_limit: str | None = None) -> dict[str, Any]:
    env = dict(os.environ, POLARS_MAX_THREADS="2", RETENTIONEERING_NO_TRACK="1",
               OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join(
                   p for p in (str(HERE.parent / "src"), os.environ.get("PYTHONPATH")) if p))
    if memory_limit:
        env["BENCH_MEMORY_LIMIT"] = memory_limit
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", peer, "--parquet",
         str(parquet), "--workspace", str(db), "--questions", ",".join(questions),
         "--repeat", str(repeat)], capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"peer": peer, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"],
                "stderr": proc.stderr[-4000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t
    return result


def installed(peer: str) -> bool:
    import importlib.util

    module = {"polars": "polars", "retentioneering": "retentioneering"}.get(peer)
    return module is None or importlib.util.find_spec(module) is not None


def gate(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every peer's answer must hash like the reference's; returns what differs."""
    ref = results.get(REFERENCE, {}).get("questions", {})
    problems = []
    for peer, r in results.items():
        for q, m in r.get("questions", {}).items():
            if q not in ref:
                problems.append(f"{peer}/{q}: no reference answer")
            elif m["hash"] != ref[q]["hash"]:
                problems.append(f"{peer}/{q}: answer differs from {REFERENCE} "
                                f"({m['rows']} vs {ref[q]['rows']} rows)")
                m["gate"] = "differs"
            else:
                m["gate"] = "equal"
    return problems


def table(results: dict[str, dict[str, Any]], tier: str, events: int) -> str:
    peers = [p for p in PEERS if p in results and "questions" in results[p]]
    lines = [f"# Journeys benchmark, tier {tier} ({events:,} events)", "",
             "Median seconds (cold first run in brackets); ratio = the peer's time / "
             f"bowknot's (above 1: bowknot is ahead); `{REFERENCE}` is the limit.", "",
             "| question | " + " | ".join(peers) + " | bowknot / limit |",
             "|---" * (len(peers) + 2) + "|"]
    for q in QUESTIONS:
        ours = results.get("bowknot", {}).get("questions", {}).get(q)
        cells = []
        for p in peers:
            m = results[p]["questions"].get(q)
            if m is None:
                cells.append("-")
                continue
            cell = f"{m['seconds']:.3f} ({m['cold_seconds']:.2f})"
            if p != "bowknot" and ours:
                cell += f" x{m['seconds'] / ours['seconds']:.2f}"
            if m.get("gate") == "differs":
                cell += " **DIFFERS**"
            cells.append(cell)
        ref = results.get(REFERENCE, {}).get("questions", {}).get(q)
        limit = f"{ours['seconds'] / ref['seconds']:.2f}" if ours and ref else "-"
        lines.append(f"| {q} | " + " | ".join(cells) + f" | {limit} |")
    # CPU seconds (all threads): steadier than wall time on a shared machine.
    lines += ["", "CPU seconds (median, all threads of the peer's process):", "",
              "| question | " + " | ".join(peers) + " | bowknot / limit |",
              "|---" * (len(peers) + 2) + "|"]
    for q in QUESTIONS:
        got = {p: results[p]["questions"][q].get("cpu_seconds") for p in peers
               if q in results[p]["questions"]}
        if not any(v is not None for v in got.values()):
            continue
        cells = [f"{got[p]:.2f}" if got.get(p) is not None else "-" for p in peers]
        ours, ref = got.get("bowknot"), got.get(REFERENCE)
        limit = f"{ours / ref:.2f}" if ours and ref else "-"
        lines.append(f"| {q} | " + " | ".join(cells) + f" | {limit} |")
    lines += ["", "| peer | load s | peak RSS MB |", "|---|---|---|"]
    for p in peers:
        r = results[p]
        lines.append(f"| {p} | {r['load_seconds']:.1f} | {r['peak_rss_mb']:,.0f} |")
    lines += ["", "Questions:", ""] + [f"* `{q}`: {d}" for q, d in QUESTIONS.items()]
    return "\n".join(lines) + "\n"


def bench(db: Path, parquet: Path, peers: list[str], questions: list[str], repeat: int,
          memory_limit: str | None = None, log: bool = True) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    order = [REFERENCE] + [p for p in peers if p != REFERENCE]
    for peer in order:
        if not installed(peer):
            results[peer] = {"peer": peer, "skipped": "not installed (pip install "
                             "'bowknot[bench]')"}
            if log:
                print(f"{peer:16s} skipped: not installed", flush=True)
            continue
        asked = [q for q in questions if q in supported(PEERS[peer])]
        results[peer] = run_peer(peer, parquet, db, asked, repeat, memory_limit)
        if log:
            r = results[peer]
            if "error" in r:
                print(f"{peer:16s} FAILED: {r['error']}", flush=True)
            else:
                times = "  ".join(f"{q} {m['seconds']:.3f}" for q, m in r["questions"].items())
                print(f"{peer:16s} load {r['load_seconds']:.1f} s  {times}  "
                      f"RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", choices=list(TIERS), default="S")
    ap.add_argument("--events", type=int, help="overrides the tier's size")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--questions", default=",".join(QUESTIONS))
    ap.add_argument("--repeat", type=int, help="timed runs per question (median kept)")
    ap.add_argument("--memory-limit", help="DuckDB memory_limit for both DuckDB peers")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--parquet", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    args = ap.parse_args()
    questions = [q for q in args.questions.split(",") if q]
    unknown = [q for q in questions if q not in QUESTIONS]
    if unknown:
        raise SystemExit(f"unknown questions {unknown}; known: {', '.join(QUESTIONS)}")
    if args.child:
        print(json.dumps(child(args.child, args.parquet, args.workspace, questions,
                               args.repeat), default=str))
        return
    events = args.events or TIERS[args.tier]
    tier = next((t for t, n in TIERS.items() if n == events), "custom")
    repeat = args.repeat or REPEAT[args.tier]
    peers = [p for p in args.peers.split(",") if p]
    db, parquet = prepare(events, memory_limit=args.memory_limit)
    started = time.time()
    results = bench(db, parquet, peers, questions, repeat, args.memory_limit)
    problems = gate(results)
    RESULTS.mkdir(exist_ok=True)
    report = {"tier": tier, "events": events, "seed": SEED, "repeat": repeat,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()},
              "threads": 2, "memory_limit": args.memory_limit, "gate": problems or "passed",
              "peers": results}
    name = f"journeys-{args.tier}" if not args.events else f"journeys-{events}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(table(results, tier, events))
    print(table(results, tier, events))
    if problems:
        raise SystemExit("correctness gate FAILED:\n  " + "\n  ".join(problems))
    print("correctness gate passed")


if __name__ == "__main__":
    main()
