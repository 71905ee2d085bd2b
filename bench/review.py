"""Review under load: simulated reviewers pulling from the queue and deciding, on PostgreSQL, through a
real uvicorn server.

    python -m bench.review [--reviewers 50] [--duration 60] [--examples 40000] [--server-workers 2]

Each reviewer loops: GET /v1/review/queue?dataset=&limit=1 (takes a lease), then
POST /v1/examples/{id}/reviews (approve, or reject with a reason for ~1 in 10). The dataset needs one
approval, so every example should be handed out and decided exactly once. Examples are imported
through the API and then set to pending_review directly: this measures review, not the pipeline.

Proof of exclusivity, from both ends: the client log shows no example handed to two reviewers whose
hold intervals overlap (nor handed twice at all), and the database holds no example with two
reviews and exactly one review per accepted decision; the audit chain verifies afterwards.

Each measurement runs on a fresh database, as one of three setups, and by default all three run, in
rounds whose order alternates (A B C, then C B A, ...) so that drift on a shared machine cancels:

  A  workspaces off: keys and the dataset in the single `default` workspace, as an installation that
     never made a workspace runs; metrics and JSON logs on
  B  workspaces on (the main figures): the reviewers are members of a team workspace (and auditors of
     a second one holding its own dataset), the dataset is the team's; metrics and JSON logs on
  C  workspaces on, metrics (multiprocess mode, scraped every 5 s) and JSON logs off

B/A is what the workspace scope costs (issue 21: >= 0.95), B/C what observability costs (issue 16:
>= 0.95), both as ratios of the medians over the rounds. `--compare workspaces|observability|none`
runs A B, B C or B alone (`--workspaces`/`--observability` pick the one setup of `none`). `pass` needs
B's medians to meet the targets (>= 200 decisions/s, queue-next and decide p99 < 100 ms), every run's
proof and no errors, and each ratio measured to reach 0.95.
The last stdout line is one JSON object with figures, targets and "pass".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import random
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import psycopg

from bench.common import (
    Scraper,
    api_server,
    bench_env,
    create_key,
    median,
    migrate,
    observability_env,
    temp_pg_database,
)

TARGET_DECISIONS_PER_S = 200
TARGET_P99_MS = 100
# Metrics and structured logs (issue 16), and workspace scoping (issue 21), may each cost at most 5% of
# the decision rate.
OBS_TARGET = 0.95
WS_TARGET = 0.95
# (workspaces, observability) per setup; see the module's docstring.
SETUPS = {"A": (False, True), "B": (True, True), "C": (True, False)}
COMPARE = {"all": "ABC", "workspaces": "AB", "observability": "BC"}
REASONS = ("factual_error", "formatting", "tone", "off_topic")


def synthetic_lines(n: int) -> list[bytes]:
    topics = ["reset a password", "export invoices", "change an address", "cancel a plan", "enable 2FA",
              "merge accounts", "request a refund", "download the app"]
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        out.append(orjson.dumps({
            "instruction": f"How do I {t}? (case {i})",
            "input": f"Ticket {100000 + i}: the customer asks how to {t} and mentions order {i * 7 % 99991}.",
            "output": f"To {t}, open the account page, choose the matching section and follow the steps; case {i}.",
            "provenance": {"source": "bench", "source_ref": f"review-bench-{i}", "license": "internal"},
        }))
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


class _Http:
    """A bare HTTP/1.1 keep-alive connection: the load generator shares the CPUs with the server and
    PostgreSQL, and a general-purpose client spends several times more CPU per request than the
    server's own parsing; this keeps the measurement about the server."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {key}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n").encode()
        self.writer.write(head + self.auth + b"\r\n" + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)


async def _reviewers(url: str, dataset: str, keys: list[str], start_at: float, measure_from: float, end_at: float,
                     seed: int, think_ms: float) -> dict:
    rng = random.Random(seed)
    host, port = url.split("://", 1)[1].split(":")
    log: list[tuple] = []
    q_lat: list[float] = []
    d_lat: list[float] = []
    errors: dict[str, int] = defaultdict(int)
    queue_path = f"/v1/review/queue?dataset={dataset}&limit=1"

    async def one(key: str) -> None:
        http = _Http(host, int(port), key)
        await asyncio.sleep(max(0.0, start_at - time.time()) + rng.random() * think_ms / 1000)
        while time.time() < end_at:
            t0 = time.perf_counter()
            status, raw = await http.request("GET", queue_path)
            t1 = time.perf_counter()
            measured = time.time() >= measure_from
            if status != 200:
                errors[f"queue {status}"] += 1
                continue
            if measured:
                q_lat.append(t1 - t0)
            items = orjson.loads(raw)["items"]
            if not items:
                await asyncio.sleep(0.05)
                continue
            it = items[0]
            held_from = time.time()
            # Reading time: uniform around --think-ms (compressed from a human's seconds so that 50
            # reviewers offer a few hundred decisions per second).
            await asyncio.sleep(think_ms / 1000 * (0.5 + rng.random()))
            if rng.random() < 0.1:
                body = {"decision": "reject", "revision_id": it["revision_id"], "reason_code": rng.choice(REASONS)}
            else:
                body = {"decision": "approve", "revision_id": it["revision_id"]}
            t2 = time.perf_counter()
            status, raw = await http.request("POST", f"/v1/examples/{it['example_id']}/reviews", orjson.dumps(body))
            t3 = time.perf_counter()
            held_to = time.time()
            if status != 201:
                errors[f"decide {status} {orjson.loads(raw).get('error', {}).get('code')}"] += 1
            elif measured:
                d_lat.append(t3 - t2)
            log.append((it["example_id"], key[-8:], held_from, held_to, status == 201, measured))

    async def clock() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, measure_from - time.time()))
        c0 = time.process_time()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        return c0, time.process_time()

    *_, (c0, c1) = await asyncio.gather(*(one(k) for k in keys), clock())
    return {"log": log, "q": q_lat, "d": d_lat, "errors": dict(errors), "client_cpu_s": c1 - c0}


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = defaultdict(list)
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                kids[int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cpu_s(pids: list[int]) -> dict[int, float]:
    out = {}
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return out


def _meter(server_pid: int, pg_url: str, start: float, end: float, out: dict[str, float]) -> None:
    """CPU seconds the API server (all its workers) and this database's PostgreSQL backends spend
    in the measured window: what a decision costs, whatever the neighbours on the machine do."""
    conn = psycopg.connect(pg_url, autocommit=True)

    def pg_pids() -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]

    def sessions() -> int:
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]

    time.sleep(max(0.0, start - time.time()))
    sessions0 = sessions()
    srv0 = _cpu_s(_tree(server_pid))
    # Backends come and go with the pool's overflow connections: sampled every 0.2 s, a backend that
    # lives only between two samples is missed, not one that lives through a sample (a reading at
    # the start and one at the end missed all of them).
    first: dict[int, float] = _cpu_s(pg_pids())
    last = dict(first)
    while time.time() < end:
        time.sleep(min(0.2, max(0.0, end - time.time())))
        for p, v in _cpu_s(pg_pids()).items():
            first.setdefault(p, 0.0)
            last[p] = v
    srv1 = _cpu_s(_tree(server_pid))
    out["server_s"] = sum(v - srv0.get(p, 0.0) for p, v in srv1.items())
    out["postgres_s"] = sum(v - first[p] for p, v in last.items())
    # Sessions PostgreSQL started in the window (pg_stat_database, PostgreSQL 14+): beyond the pools'
    # first fill, connections opened and closed under load, each a backend forked and warmed up.
    out["postgres_sessions"] = sessions() - sessions0
    conn.close()


def _proc(args: tuple) -> dict:
    return asyncio.run(_reviewers(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviewers", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (after --warmup)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds excluded from the latency figures")
    ap.add_argument("--examples", type=int, default=25000, help="pending examples (enough not to run dry)")
    ap.add_argument("--server-workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sharing the reviewers")
    ap.add_argument("--think-ms", type=float, default=200.0,
                    help="mean reading time per item (0: reviewers hammer back to back, to find the ceiling)")
    ap.add_argument("--compare", choices=("all", "workspaces", "observability", "none"), default="all",
                    help="all: setups A B C; workspaces: A B; observability: B C; none: one setup")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of the compared setups, the order reversed every other round; medians")
    ap.add_argument("--workspaces", choices=("on", "off"), default="on", help="with --compare none")
    ap.add_argument("--observability", choices=("on", "off"), default="on", help="with --compare none")
    args = ap.parse_args()
    if args.compare == "none":
        setup = {v: k for k, v in SETUPS.items()}.get((args.workspaces == "on", args.observability == "on"))
        if setup is None:
            ap.error("workspaces off with observability off is not one of the setups")
        order = [setup]
    else:
        cells = COMPARE[args.compare]
        order = [c for k in range(args.rounds) for c in (cells if k % 2 == 0 else cells[::-1])]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, cell in enumerate(order):
            ws, obs = SETUPS[cell]
            runs.setdefault(cell, []).append(run_once(args, cell, ws, obs, Path(tmp) / f"{i}-{cell}"))
    main_cell = "B" if "B" in runs else order[0]
    result = dict(runs[main_cell][-1])

    def med(cell: str, get) -> float:
        return median([get(r) for r in runs[cell]])

    def rate(cell: str) -> float:
        return med(cell, lambda r: r["decisions_per_s"])

    def cpu(cell: str) -> float:
        return med(cell, lambda r: r["cpu_ms_per_decision"]["server"])

    keep = ("decisions_per_s", "queue_next_ms", "decide_ms", "cpu_ms_per_decision", "load_avg_1m", "pass")
    medians = {cell: {"decisions_per_s": round(rate(cell), 1),
                      "queue_next_p99_ms": round(med(cell, lambda r: r["queue_next_ms"]["p99"]), 1),
                      "decide_p50_ms": round(med(cell, lambda r: r["decide_ms"]["p50"]), 1),
                      "decide_p99_ms": round(med(cell, lambda r: r["decide_ms"]["p99"]), 1),
                      "server_cpu_ms_per_decision": round(cpu(cell), 2),
                      "postgres_cpu_ms_per_decision": round(med(cell, lambda r: r["cpu_ms_per_decision"]["postgres"]), 2),
                      "runs": len(runs[cell])} for cell in sorted(runs)}
    loads = [x for rs in runs.values() for r in rs for x in r["load_avg_1m"].values()]
    result.update(
        order=order,
        setups={c: {"workspaces": SETUPS[c][0], "observability": SETUPS[c][1]} for c in sorted(runs)},
        runs={cell: [{k: r[k] for k in keep} for r in rs] for cell, rs in sorted(runs.items())},
        medians=medians,
        # Several sessions share this machine's two cores: a load average well above 2 means the
        # latency figures say as much about the neighbours as about the service.
        load_avg_1m_range=[min(loads), max(loads)],
    )
    m = medians[main_cell]
    ok = (all(r["proof_ok"] and not r["errors"] for rs in runs.values() for r in rs)
          and m["decisions_per_s"] >= TARGET_DECISIONS_PER_S and m["queue_next_p99_ms"] < TARGET_P99_MS
          and m["decide_p99_ms"] < TARGET_P99_MS)
    if "A" in runs and "B" in runs:
        ratio = rate("B") / max(rate("A"), 1e-9)
        result["workspaces_on_vs_off"] = round(ratio, 3)
        result["workspaces_on_vs_off_server_cpu_ms_per_decision"] = round(cpu("B") / max(cpu("A"), 1e-9), 3)
        result["targets"]["workspaces_on_vs_off_min"] = WS_TARGET
        ok = ok and ratio >= WS_TARGET
        print(f"workspaces on vs off (medians of {len(runs['B'])} / {len(runs['A'])} runs): {ratio:.3f}x decisions/s, "
              f"{cpu('B') / max(cpu('A'), 1e-9):.3f}x server CPU per decision; decide p99 "
              f"{medians['B']['decide_p99_ms']} vs {medians['A']['decide_p99_ms']} ms")
    if "B" in runs and "C" in runs:
        ratio = rate("B") / max(rate("C"), 1e-9)
        result["observability_on_vs_off"] = round(ratio, 3)
        result["observability_on_vs_off_server_cpu_ms_per_decision"] = round(cpu("B") / max(cpu("C"), 1e-9), 3)
        result["targets"]["observability_on_vs_off_min"] = OBS_TARGET
        ok = ok and ratio >= OBS_TARGET
        print(f"metrics+JSON logs on vs off (medians of {len(runs['B'])} / {len(runs['C'])} runs): {ratio:.3f}x "
              f"decisions/s, {cpu('B') / max(cpu('C'), 1e-9):.3f}x server CPU per decision; decide p99 "
              f"{medians['B']['decide_p99_ms']} vs {medians['C']['decide_p99_ms']} ms")
    print(f"setup {main_cell} medians: {m['decisions_per_s']} decisions/s, queue-next p99 {m['queue_next_p99_ms']} ms, "
          f"decide p99 {m['decide_p99_ms']} ms; load average {min(loads)}-{max(loads)} on {os.cpu_count()} CPUs")
    result["pass"] = bool(ok)
    print(json.dumps(result))


def run_once(args: argparse.Namespace, cell: str, workspaces: bool, obs: bool, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    with temp_pg_database("pedigree_bench_review") as db_url:
        env = bench_env(db_url)
        env.setdefault("PEDIGREE_PII_VAULT_KEYS", base64.b64encode(b"bench-vault-key-32-bytes-long!!!").decode())
        migrate(env)
        admin = create_key(env, "admin")
        # Both sides log as production does (INFO with the access log, to a file); only the format and
        # the metrics differ.
        with api_server(observability_env(env, obs, folder), workers=args.server_workers,
                        log_path=folder / "api.log") as (url, server_proc):
            H = {"Authorization": f"Bearer {admin}"}
            team: dict[str, str] = {}
            if workspaces:
                # The reviewers work in their team's workspace and audit another one, which holds a
                # dataset of its own: every lookup has a workspace to tell apart.
                team = {"workspace": httpx.post(f"{url}/v1/workspaces", json={"name": "bench-team"},
                                                headers=H).raise_for_status().json()["id"]}
                other = httpx.post(f"{url}/v1/workspaces", json={"name": "bench-other"},
                                   headers=H).raise_for_status().json()["id"]
            curator = httpx.post(f"{url}/v1/keys", json={"name": "bench-curator", "role": "curator", **team},
                                 headers=H).raise_for_status().json()["key"]
            made = [httpx.post(f"{url}/v1/keys", json={"name": f"bench-reviewer-{i}", "role": "reviewer", **team},
                               headers=H).raise_for_status().json() for i in range(args.reviewers)]
            keys = [k["key"] for k in made]
            if workspaces:
                for k in made:
                    httpx.post(f"{url}/v1/workspaces/{other}/members", json={"key_id": k["id"], "role": "auditor"},
                               headers=H).raise_for_status()
                other_curator = httpx.post(f"{url}/v1/keys", json={"name": "bench-other-curator", "role": "curator",
                                                                   "workspace": other},
                                           headers=H).raise_for_status().json()["key"]
                ods = httpx.post(f"{url}/v1/datasets", headers={"Authorization": f"Bearer {other_curator}"},
                                 json={"name": "review-bench-other", "format": "instruction", "workspace": other}
                                 ).raise_for_status().json()
                httpx.post(f"{url}/v1/datasets/{ods['id']}/examples:import",
                           content=b"\n".join(synthetic_lines(500)) + b"\n", timeout=None,
                           headers={"Authorization": f"Bearer {other_curator}",
                                    "Content-Type": "application/x-ndjson"}).raise_for_status()
            ds = httpx.post(f"{url}/v1/datasets", headers={"Authorization": f"Bearer {curator}"},
                            json={"name": f"review-bench-{uuid.uuid4().hex[:6]}", "format": "instruction",
                                  "review_policy": {"required_approvals": 1, "four_eyes": True}, **team}
                            ).raise_for_status().json()
            t0 = time.perf_counter()
            body = b"\n".join(synthetic_lines(args.examples)) + b"\n"
            r = httpx.post(f"{url}/v1/datasets/{ds['id']}/examples:import", content=body, timeout=None,
                           headers={"Authorization": f"Bearer {curator}", "Content-Type": "application/x-ndjson"})
            r.raise_for_status()
            # The pipeline's tasks went to a broker nobody consumes: put the examples where review starts.
            pg_url = db_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(pg_url, autocommit=True) as c:
                c.execute("UPDATE examples SET status = 'pending_review', stage = NULL")
                c.execute("VACUUM ANALYZE")
            setup_s = time.perf_counter() - t0

            load_before = os.getloadavg()
            start_at = time.time() + 1.0
            measure_from = start_at + args.warmup
            end_at = measure_from + args.duration
            shares = [keys[i::args.client_procs] for i in range(args.client_procs)]
            cpu: dict[str, float] = {}
            meter = threading.Thread(target=_meter, args=(server_proc.pid, pg_url, measure_from, end_at, cpu))
            meter.start()
            with Scraper(url, admin) if obs else contextlib.nullcontext() as scraper, \
                    mp.get_context("spawn").Pool(args.client_procs) as pool:
                parts = pool.map(_proc, [(url, ds["id"], s, start_at, measure_from, end_at, i, args.think_ms)
                                         for i, s in enumerate(shares)])
            load_after = os.getloadavg()
            meter.join()
            verify = httpx.get(f"{url}/v1/audit/verify", headers=H, timeout=None).json()

        log = [e for p in parts for e in p["log"]]
        client_cpu = sum(p["client_cpu_s"] for p in parts)
        q_lat = [x for p in parts for x in p["q"]]
        d_lat = [x for p in parts for x in p["d"]]
        errors: dict[str, int] = defaultdict(int)
        for p in parts:
            for k, v in p["errors"].items():
                errors[k] += v
        # Exclusivity, client side: intervals of the same example held by different reviewers.
        by_example: dict[str, list[tuple]] = defaultdict(list)
        for eid, who, a, b, _ok, _m in log:
            by_example[eid].append((a, b, who))
        handed_twice = sum(1 for v in by_example.values() if len(v) > 1)
        overlapping = 0
        for v in by_example.values():
            v.sort()
            for (a1, b1, w1), (a2, _b2, w2) in itertools.pairwise(v):
                if w1 != w2 and a2 < b1:
                    overlapping += 1
        ok = sum(1 for e in log if e[4])
        measured_ok = sum(1 for e in log if e[4] and e[5])
        with psycopg.connect(pg_url) as c:
            reviews = c.execute("SELECT count(*) FROM reviews").fetchone()[0]
            decided_twice = c.execute(
                "SELECT count(*) FROM (SELECT example_id FROM reviews GROUP BY example_id HAVING count(*) > 1) t"
            ).fetchone()[0]
            statuses = dict(c.execute("SELECT status, count(*) FROM examples GROUP BY status").fetchall())

    rate = measured_ok / args.duration
    q50, q99 = pct(q_lat, 50) * 1000, pct(q_lat, 99) * 1000
    d50, d99 = pct(d_lat, 50) * 1000, pct(d_lat, 99) * 1000
    proof_ok = handed_twice == 0 and overlapping == 0 and decided_twice == 0 and reviews == ok and verify["ok"]
    result = {
        "bench": "review",
        "machine": f"{platform.node()} ({os.cpu_count()} cpus, {platform.machine()})",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # The machine is shared: a load average well above the CPU count means the figures say as
        # much about the neighbours as about the service.
        "load_avg_1m": {"before": round(load_before[0], 1), "after": round(load_after[0], 1)},
        "reviewers": args.reviewers, "duration_s": args.duration, "server_workers": args.server_workers,
        "client_procs": args.client_procs, "think_ms": args.think_ms, "examples": args.examples, "setup_s": round(setup_s, 1),
        "decisions": ok, "decisions_measured": measured_ok,
        "decisions_per_s": round(rate, 1),
        "queue_next_ms": {"p50": round(q50, 1), "p99": round(q99, 1), "n": len(q_lat)},
        "decide_ms": {"p50": round(d50, 1), "p99": round(d99, 1), "n": len(d_lat)},
        "errors": dict(errors),
        # CPU per decision (one queue-next plus one decide): the service's own cost, and the
        # ceiling it implies on this machine's cores if nothing else ran on them.
        "cpu_ms_per_decision": {"server": round(1000 * cpu.get("server_s", 0) / max(measured_ok, 1), 2),
                                "postgres": round(1000 * cpu.get("postgres_s", 0) / max(measured_ok, 1), 2),
                                "client": round(1000 * client_cpu / max(measured_ok, 1), 2)},
        "postgres_sessions_started": cpu.get("postgres_sessions", 0),
        "ceiling_decisions_per_s_dedicated": round(
            (os.cpu_count() or 1) / max((cpu.get("server_s", 0) + cpu.get("postgres_s", 0) + client_cpu)
                                        / max(measured_ok, 1), 1e-9), 0),
        "proof": {"examples_handed_out": len(by_example), "handed_to_two_reviewers": handed_twice,
                  "overlapping_holds": overlapping, "reviews_in_db": reviews, "accepted_decisions": ok,
                  "examples_decided_twice": decided_twice, "audit_chain_ok": verify["ok"],
                  "audit_events": verify["events"], "statuses": statuses},
        "targets": {"decisions_per_s": TARGET_DECISIONS_PER_S, "p99_ms": TARGET_P99_MS},
        "setup": cell, "workspaces_on": workspaces, "observability_on": obs,
        "scrapes": {"done": scraper.scrapes, "failed": scraper.failed} if obs else None,
        "proof_ok": bool(proof_ok and (not obs or scraper.failed == 0)),
    }
    result["pass"] = bool(proof_ok and rate >= TARGET_DECISIONS_PER_S and q99 < TARGET_P99_MS
                          and d99 < TARGET_P99_MS and not errors and (not obs or scraper.failed == 0))
    print(f"[{cell}: workspaces {'on' if workspaces else 'off'}, metrics+logs {'on' if obs else 'off'}, load "
          f"{load_before[0]:.1f}->{load_after[0]:.1f}] {ok} decisions in {args.duration:.0f}s by {args.reviewers} "
          f"reviewers: {rate:.0f}/s; queue-next p50 {q50:.1f} ms p99 {q99:.1f} ms; decide p50 {d50:.1f} ms "
          f"p99 {d99:.1f} ms; handed twice {handed_twice}, decided twice {decided_twice}")
    return result


if __name__ == "__main__":
    main()
