#!/usr/bin/env python3
"""Helpers of benches/overload.sh (stdlib only, asyncio).

  overload.py upstream --port P --parallel N --service-ms MS
      HTTP/1.1 keep-alive server that serves at most N requests at a time, each
      taking MS ms, and queues the rest (FIFO): latency = queueing + service.
  overload.py outage-upstream --port P --healthy S --outage S --mode 500|refuse
      Healthy (1 ms service) for S s after start, then fails everything for S s
      (500 at once, or the listener and all connections closed: connection
      refused), then healthy again. Prints {"event": "fail"|"recover", "t": epoch}.
  overload.py paced-client --port P --authority HOST:PORT --rate R --secs S --out FILE
      Open loop: R GET/s for S s over keep-alive connections (a new one when
      none is idle), one line per request: send epoch, answer epoch, status
      (0 = no answer), x-breakwater-reason.
  overload.py load-stats --log H2LOAD_LOG --from-s W --secs S
      Goodput, p99 of 2xx, shares by status from an h2load --log-file, counting
      requests started in [first start + W, first start + S).
  overload.py outage-stats --log CLIENT_LOG --events UPSTREAM_EVENTS
      Time from the upstream's failure to the first circuit-open answer, and
      from its recovery to full traffic (every later request 2xx).
  overload.py limit-stats --polls FILE --h2load-log H2LOAD_LOG --from-s W --secs S
      The adaptive limit as /upstreams showed it (one poll a second) while the
      load ran: median, range and last, and the RTTs the limiter saw.
  overload.py report --load FILE --outage FILE --meta FILE
      The Markdown report from the JSON lines the harness collected.
"""

import argparse
import asyncio
import json
import os
import sys
import time

RESPONSE_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
RESPONSE_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 5\r\n\r\ndown\n")


async def read_request(reader):
    """Reads one request head (and its Content-Length body); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if length:
        await reader.readexactly(length)
    return head


# ----------------------------------------------------------------- upstream --
def upstream(args):
    sem = asyncio.Semaphore(args.parallel)
    service = args.service_ms / 1000.0

    async def handle(reader, writer):
        try:
            while await read_request(reader) is not None:
                async with sem:  # FIFO waiters: the queue in front of the N workers
                    await asyncio.sleep(service)
                writer.write(RESPONSE_OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=1024,
                                            reuse_address=True)
        print(json.dumps({"event": "listening", "port": args.port}), flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def outage_upstream(args):
    state = {"failing": False}
    conns = set()

    async def handle(reader, writer):
        conns.add(writer)
        try:
            while await read_request(reader) is not None:
                if state["failing"]:
                    writer.write(RESPONSE_500)
                else:
                    await asyncio.sleep(0.001)
                    writer.write(RESPONSE_OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conns.discard(writer)
            writer.close()

    async def listen():
        return await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=1024,
                                          reuse_address=True)

    def event(name):
        print(json.dumps({"event": name, "t": time.time(), "mode": args.mode}), flush=True)

    async def main():
        server = await listen()
        event("listening")
        await asyncio.sleep(args.healthy)
        state["failing"] = True
        if args.mode == "refuse":
            server.close()
            for w in list(conns):
                w.transport.abort()
            await server.wait_closed()
        event("fail")
        await asyncio.sleep(args.outage)
        state["failing"] = False
        if args.mode == "refuse":
            server = await listen()
        event("recover")
        await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------- paced client --
async def one_request(pool, host, port, head):
    """Sends one GET on an idle connection (or a new one); (status, reason)."""
    conn = pool.pop() if pool else None
    if conn is None:
        try:
            conn = await asyncio.open_connection(host, port)
        except OSError:
            return 0, "client-connect-failed"
    reader, writer = conn
    try:
        writer.write(head)
        await writer.drain()
        status_head = await reader.readuntil(b"\r\n\r\n")
        lines = status_head.split(b"\r\n")
        status = int(lines[0].split()[1])
        reason, length, chunked, close = "", 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"x-breakwater-reason":
                reason = value.decode()
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.lower() == b"close":
                close = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await reader.readexactly(length)
        if close:
            writer.close()
        else:
            pool.append(conn)
        return status, reason
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        writer.close()
        return 0, "client-broken"


def paced_client(args):
    host, port = "127.0.0.1", args.port
    head = (f"GET /outage HTTP/1.1\r\nHost: {args.authority}\r\n\r\n").encode()
    rows = []

    async def timed(t_send):
        try:
            status, reason = await asyncio.wait_for(one_request(pool, host, port, head), 5.0)
        except asyncio.TimeoutError:
            status, reason = 0, "client-timeout"
        rows.append((t_send, time.time(), status, reason or "-"))

    pool = []

    async def main():
        tasks = []
        t0 = time.time()
        n = int(args.rate * args.secs)
        for i in range(n):
            delay = t0 + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed(time.time())))
        await asyncio.gather(*tasks)

    asyncio.run(main())
    rows.sort()
    with open(args.out, "w") as f:
        for r in rows:
            f.write(f"{r[0]:.6f}\t{r[1]:.6f}\t{r[2]}\t{r[3]}\n")


# ------------------------------------------------------------------- stats --
def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(1, -(-len(sorted_values) * p // 100))  # nearest rank
    return sorted_values[int(k) - 1]


def load_stats(args):
    rows = []
    with open(args.log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        print(json.dumps({"requests": 0}))
        return
    t0 = min(r[0] for r in rows)
    run_503 = sum(1 for r in rows if r[1] == 503)
    lo, hi = t0 + args.from_s * 1e6, t0 + args.secs * 1e6
    win = [r for r in rows if lo <= r[0] < hi]
    ok = sorted(r[2] for r in win if 200 <= r[1] < 300)
    n = len(win)
    by_status = {}
    for r in win:
        by_status[r[1]] = by_status.get(r[1], 0) + 1
    secs = (hi - lo) / 1e6
    print(json.dumps({
        "requests": n,
        "run_503": run_503,
        "secs": secs,
        "offered_rps": n / secs,
        "goodput_rps": len(ok) / secs,
        "p50_ms": pct(ok, 50) / 1000,
        "p99_ms": pct(ok, 99) / 1000,
        "refused_pct": 100.0 * by_status.get(503, 0) / n if n else 0,
        "other_pct": 100.0 * sum(c for s, c in by_status.items()
                                 if not (200 <= s < 300 or s == 503)) / n if n else 0,
        "statuses": {str(k): v for k, v in sorted(by_status.items())},
    }))


def outage_stats(args):
    events = {}
    with open(args.events) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            events[e.get("event")] = e.get("t")
    rows = []
    with open(args.log) as f:
        for line in f:
            s, r, status, reason = line.rstrip("\n").split("\t")
            rows.append((float(s), float(r), int(status), reason))
    t_fail, t_rec = events.get("fail"), events.get("recover")
    out = {"requests": len(rows)}
    if t_fail is None or t_rec is None or not rows:
        print(json.dumps(out))
        return
    ok = lambda row: 200 <= row[2] < 300
    # The first circuit-open answer after the failure (by answer time), and how
    # many requests the failing upstream answered (or refused) before it.
    co = [row for row in rows if row[3] == "circuit-open" and row[1] >= t_fail]
    first_co = min((row[1] for row in co), default=None)
    out["fail_fast_ms"] = None if first_co is None else (first_co - t_fail) * 1000
    out["failed_before_open"] = sum(
        1 for row in rows
        if row[0] >= t_fail - 0.01 and not ok(row) and row[3] != "circuit-open"
        and (first_co is None or row[1] <= first_co))
    during = [row for row in rows if t_fail <= row[0] < t_rec]
    out["outage_requests"] = len(during)
    out["outage_circuit_open_pct"] = (100.0 * sum(1 for row in during if row[3] == "circuit-open")
                                      / len(during)) if during else 0
    out["outage_mean_ms"] = (sum(row[1] - row[0] for row in during) / len(during) * 1000
                             if during else 0)
    # Full traffic: the send time of the first request after the recovery from
    # which every later request was a 2xx.
    after = [row for row in rows if row[0] >= t_rec]
    last_bad = max((row[0] for row in after if not ok(row)), default=None)
    if last_bad is None:
        full = after[0][0] if after else None
    else:
        later = [row[0] for row in after if row[0] > last_bad]
        full = later[0] if later else None
    out["full_traffic_s"] = None if full is None else full - t_rec
    out["first_ok_after_recovery_s"] = next((row[0] - t_rec for row in after if ok(row)), None)
    out["refused_after_recovery"] = sum(1 for row in after if not ok(row))
    out["outage_s"] = t_rec - t_fail
    # What the outage cost a client: every non-2xx answer from the failure on,
    # as seconds of traffic at the paced rate (issue 13's recovery figure).
    span = rows[-1][0] - rows[0][0]
    rate = (len(rows) - 1) / span if span > 0 else 0
    failed = sum(1 for row in rows if row[0] >= t_fail and not ok(row))
    out["failed_s"] = failed / rate if rate else None
    out["tail_s"] = rows[-1][0] - t_rec
    out["reasons"] = {}
    for row in rows:
        if row[0] >= t_fail and not ok(row):
            key = f"{row[2]} {row[3]}"
            out["reasons"][key] = out["reasons"].get(key, 0) + 1
    print(json.dumps(out))


def limit_stats(args):
    t0 = None
    with open(args.h2load_log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                t = int(parts[0]) / 1e6
                t0 = t if t0 is None else min(t0, t)
    polls = []
    with open(args.polls) as f:
        for line in f:
            t, _, body = line.partition("\t")
            try:
                dests = json.loads(body)
            except ValueError:
                continue
            for d in dests:
                if d.get("direction") == "outbound" and d.get("adaptive_limit"):
                    a = d["adaptive_limit"]
                    polls.append((float(t), a["limit"], a.get("rtt_recent_us"), a.get("rtt_baseline_us"),
                                  (d.get("bulkhead") or {}).get("in_flight")))
    if t0 is not None:
        polls = [p for p in polls if t0 + args.from_s <= p[0] < t0 + args.secs]
    if not polls:
        print(json.dumps({}))
        return
    limits = sorted(p[1] for p in polls)
    shorts = sorted(p[2] for p in polls if p[2] is not None)
    print(json.dumps({
        "limit_median": limits[len(limits) // 2],
        "limit_min": limits[0],
        "limit_max": limits[-1],
        "limit_last": polls[-1][1],
        "rtt_short_ms_median": shorts[len(shorts) // 2] / 1000 if shorts else None,
        "rtt_long_ms_last": (polls[-1][3] or 0) / 1000,
        "series": [p[1] for p in polls],
    }))


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def report(args):
    meta = json.load(open(args.meta))
    load = read_jsonl(args.load)
    outage = read_jsonl(args.outage)
    f1 = lambda v: "-" if v is None or v != v else f"{v:.1f}"
    unloaded = {r["row"]: r for r in load if r.get("kind") == "unloaded"}
    base = unloaded.get("direct", {}).get("p50_ms")
    print(f"## overload and outage ({meta['date']})")
    print()
    print(f"- machine: {meta['cpus']} CPUs, loadavg at start {meta['load_start']}, at end {meta['load_end']}; "
          f"breakwater `run --threads 1`, outbound listener, Host routing")
    print()
    if load:  # --only outage runs no overload rows
        print(f"### (a) Overload: upstream serves {meta['parallel']} at a time, {meta['service_ms']:g} ms each, "
              f"queues the rest (capacity {1000 * meta['parallel'] / meta['service_ms']:.0f} req/s)")
        print()
        print(f"Load: `h2load --h1 -c {meta['conc']} --rps {meta['rps']}` (connections started {meta['stagger']} apart), "
              f"offered {meta['conc'] * meta['rps']} req/s for {meta['secs']} s, one request in flight per connection; "
              f"figures over s {meta['warmup']}-{meta['secs']} (first {meta['warmup']} s left out). "
              f"`--max-queue 0`, so a request over the limit gets 503 bulkhead-full at once.")
        print()
        print("| breakwater | sent req/s | goodput req/s | p50 ms (2xx) | p99 ms (2xx) | refused 503 % | other % | limit (auto) |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for name in ("direct", "breakwater"):
            r = unloaded.get(name)
            if r:
                label = "direct to the upstream" if name == "direct" else "through breakwater (auto, warmed row)"
                print(f"| unloaded: 1 client, {r['requests']} GETs, {label} | - | - | {f1(r['p50_ms'])} | {f1(r['p99_ms'])} | "
                      f"{r['refused_pct']:.1f} | {r['other_pct']:.1f} | - |")
        for r in load:
            if r.get("kind") != "load":
                continue
            lim = "-"
            if r.get("limit_median") is not None:
                lim = (f"{r['limit_median']} (range {r['limit_min']}-{r['limit_max']}, last {r['limit_last']}; "
                       f"RTT short {f1(r['rtt_short_ms_median'])} / long {f1(r['rtt_long_ms_last'])} ms)")
            print(f"| {r['row']} | {r['offered_rps']:.0f} | {r['goodput_rps']:.0f} | {f1(r['p50_ms'])} | {f1(r['p99_ms'])} | "
                  f"{r['refused_pct']:.1f} | {r['other_pct']:.1f} | {lim} |")
        print()
        rows = [r for r in load if r.get("kind") == "load"]
        agree = all(r.get("rejected_metric") == r.get("run_503") for r in rows)
        print(f"- cross-check: breakwater_rejected_total{{reason=\"bulkhead-full\"}} equals the client's 503 count over "
              f"each whole run: {'yes' if agree else 'NO: ' + ', '.join(str((r['key'], r.get('rejected_metric'), r.get('run_503'))) for r in rows)}")
        if base is not None:
            print(f"- unloaded latency of the upstream (target base): {base:.1f} ms (p50, direct); 2x = {2 * base:.1f} ms")
        statics = [r for r in load if r.get("kind") == "load" and r.get("static")]
        best = max(statics, key=lambda r: r["goodput_rps"], default=None)
        for r in load:
            if r.get("kind") != "load" or not r.get("auto") or best is None or base is None:
                continue
            p99_ok = r["p99_ms"] <= 2 * base
            gp_ok = r["goodput_rps"] >= 0.9 * best["goodput_rps"]
            print(f"- target, {r['row']}: p99 {f1(r['p99_ms'])} ms vs 2 x unloaded p50 {2 * base:.1f} ms: "
                  f"{'met' if p99_ok else 'NOT met'}; goodput {r['goodput_rps']:.0f} vs best static "
                  f"({best['row']}) {best['goodput_rps']:.0f} - 10 %: {'met' if gp_ok else 'NOT met'}")
        print()
    print(f"### (b) Outage: upstream healthy, then fails everything for {meta['outage_s']:g} s, then recovers; "
          f"{meta['rate']:g} req/s paced GETs")
    print()
    print("| breakwater | upstream failure | fail-fast after (ms) | failed answers before it | "
          "circuit-open % of outage | first 2xx after recovery (s) | full traffic after recovery (s) | "
          "non-2xx after recovery | failed requests as seconds of traffic | trips |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in outage:
        ff = r.get("fail_fast_ms")
        print(f"| {r['row']} | {r['mode']} | {f1(ff)} | {r.get('failed_before_open', '-')} | "
              f"{f1(r.get('outage_circuit_open_pct'))} | {r.get('first_ok_after_recovery_s', float('nan')):.2f} | "
              f"{'-' if r.get('full_traffic_s') is None else format(r['full_traffic_s'], '.2f')} | "
              f"{r.get('refused_after_recovery', '-')} | "
              f"{'-' if r.get('failed_s') is None else format(r['failed_s'], '.2f')} | {r.get('trips', '-')} |")
    print()
    for r in outage:
        print(f"- {r['row']} ({r['mode']}): answers after the failure other than 2xx: "
              + ", ".join(f"{k} x{v}" for k, v in sorted(r.get("reasons", {}).items())))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--parallel", type=int, default=8)
    u.add_argument("--service-ms", type=float, default=20.0)
    o = sub.add_parser("outage-upstream")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--healthy", type=float, default=4.0)
    o.add_argument("--outage", type=float, default=4.0)
    o.add_argument("--mode", choices=["500", "refuse"], default="500")
    c = sub.add_parser("paced-client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--authority", required=True)
    c.add_argument("--rate", type=float, default=200.0)
    c.add_argument("--secs", type=float, default=15.0)
    c.add_argument("--out", required=True)
    s = sub.add_parser("load-stats")
    s.add_argument("--log", required=True)
    s.add_argument("--from-s", type=float, default=0.0)
    s.add_argument("--secs", type=float, required=True)
    t = sub.add_parser("outage-stats")
    t.add_argument("--log", required=True)
    t.add_argument("--events", required=True)
    li = sub.add_parser("limit-stats")
    li.add_argument("--polls", required=True)
    li.add_argument("--h2load-log", required=True)
    li.add_argument("--from-s", type=float, default=0.0)
    li.add_argument("--secs", type=float, required=True)
    rp = sub.add_parser("report")
    rp.add_argument("--load", required=True)
    rp.add_argument("--outage", required=True)
    rp.add_argument("--meta", required=True)
    args = p.parse_args()
    {"upstream": upstream, "outage-upstream": outage_upstream, "paced-client": paced_client,
     "load-stats": load_stats, "outage-stats": outage_stats,
     "limit-stats": limit_stats, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
