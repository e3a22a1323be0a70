#!/usr/bin/env python3
"""Rows, table, ratios and plot of the Rookery benchmark suite (called by bench/run.sh).

  report.py meta META_JSON key=value...            machine and run settings
  report.py add ROWS ID GROUP OUTFILE key=value...  record one run (OUTFILE: its JSON line)
  report.py unavailable ROWS ID GROUP REASON        record a row that could not run
  report.py get ROWS ID FIELD                       print a field of a recorded row (0 if none)
  report.py finish ROWS META_JSON OUT_JSON OUT_SVG  write latest.json, table.md, the plot;
                                                    print the table
  report.py table LATEST_JSON [OUT_SVG]             print the table (and redraw the plot) of a
                                                    saved run

No third-party modules: the SVG is written by hand.
"""

import datetime
import json
import math
import os
import platform
import subprocess
import sys


# ------------------------------------------------------------------------------------------
# Recording.

def parse_kv(items):
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = v
    return out


def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) else f


def last_json(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def rate_of(result):
    for k in ("requests_per_sec", "calls_per_sec", "deliveries_per_sec"):
        if k in result:
            return float(result[k])
    return 0.0


def cmd_add(rows, rid, group, outfile, *kv):
    extra = parse_kv(kv)
    result = last_json(outfile)
    row = {"id": rid, "group": group}
    if result is None:
        err = ""
        errfile = os.path.splitext(outfile)[0] + ".err"
        try:
            with open(errfile) as f:
                err = f.read().strip().splitlines()[-1:]
                err = err[0] if err else ""
        except OSError:
            pass
        row["unavailable"] = "no result" + (f": {err}" if err else "")
    else:
        row["result"] = result
        row["rps"] = rate_of(result)
    cpu = extra.pop("cpu", "").split()
    if len(cpu) >= 3 and row.get("rps"):
        server_s, gen_s, interval = (float(x) for x in cpu[:3])
        # A negative generator figure: it had ended before the sample did (unknown then).
        gen_known = gen_s >= 0
        if interval > 0:
            row["server_cpu_cores"] = server_s / interval
            row["server_cpu_us_per_op"] = server_s / interval / row["rps"] * 1e6
            if gen_known:
                row["gen_cpu_cores"] = gen_s / interval
                row["gen_cpu_us_per_op"] = gen_s / interval / row["rps"] * 1e6
            if len(cpu) >= 4 and gen_known:
                # Busy CPU of the machine not charged to the server or the load generator:
                # loopback softirq work charged to no process, kernel threads, other users.
                row["other_cpu_cores"] = max(0.0, (float(cpu[3]) - server_s - gen_s) / interval)
    for k, v in extra.items():
        row[k] = num(v)
    with open(rows, "a") as f:
        f.write(json.dumps(row) + "\n")
    summary = f"{row.get('rps', 0):,.0f}/s" if "result" in row else row["unavailable"]
    if "result" in row and "p99_us" in row["result"]:
        summary += f", p99 {row['result']['p99_us']} us"
    if "server_cpu_us_per_op" in row:
        summary += f", server CPU {row['server_cpu_us_per_op']:.1f} us/op"
    print(f"  {rid}: {summary}", file=sys.stderr)


def cmd_unavailable(rows, rid, group, reason):
    with open(rows, "a") as f:
        f.write(json.dumps({"id": rid, "group": group, "unavailable": reason}) + "\n")


def load_rows(rows):
    out = {}
    try:
        with open(rows) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    out[r["id"]] = r
    except OSError:
        pass
    return out


def cmd_keep_quietest(rows, rid):
    """Of several attempts of one row, keep the one with the least outside load (moved last,
    so that it wins when the rows are loaded)."""
    with open(rows) as f:
        entries = [json.loads(l) for l in f if l.strip()]
    tries = [e for e in entries if e["id"] == rid]
    if len(tries) < 2:
        return
    def noise(e):
        return e.get("other_cpu_cores", 0.0) if "result" in e else float("inf")
    best = min(tries, key=noise)
    best["attempts"] = len(tries)
    rest = [e for e in entries if e["id"] != rid]
    with open(rows, "w") as f:
        for e in rest + [best]:
            f.write(json.dumps(e) + "\n")
    print(f"  {rid}: kept the attempt with {noise(best):.2f} cores of outside load "
          f"({best.get('rps', 0):,.0f}/s)", file=sys.stderr)


def cmd_get(rows, rid, field):
    r = load_rows(rows).get(rid, {})
    print(r.get(field, 0) or 0)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def cmd_meta(path, *kv):
    meta = {k: num(v) for k, v in parse_kv(kv).items()}
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    meta.update({
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": sh("git rev-parse --short HEAD"),
        "dirty": bool(sh("git status --porcelain --untracked-files=no")),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "rustc": sh("rustc --version"),
        "node": sh("node --version"),
        "nats_server": sh("nats-server --version"),
    })
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)


# ------------------------------------------------------------------------------------------
# The table.

def fmt_rate(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e4:
        return f"{v / 1e3:.1f} k"
    return f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "-"
    if v >= 10000:
        return f"{v / 1000:.0f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} us"


def status(value, target, higher=True):
    """'met' or 'MISSED by X%' for value against target."""
    if value is None or target is None:
        return "n/a"
    if (value >= target) if higher else (value <= target):
        return "met"
    if higher:
        short = (target - value) / target * 100
        return f"MISSED ({short:.0f}% short)"
    over = (value - target) / target * 100
    return f"MISSED ({over:.0f}% over)"


def build_table(rows, meta):
    """Returns (lines of the markdown table, list of verdict dicts)."""
    R = rows

    def ok(rid):
        r = R.get(rid)
        return r is not None and "result" in r and r.get("rps", 0) > 0

    def rps(rid):
        return R[rid]["rps"] if ok(rid) else None

    def res(rid, k):
        return R[rid]["result"].get(k) if ok(rid) else None

    def cpu(rid):
        r = R.get(rid) or {}
        v = r.get("server_cpu_us_per_op")
        return f"{v:.1f} us" if v is not None else "-"

    def cores(rid):
        r = R.get(rid) or {}
        if "server_cpu_cores" not in r:
            return "-"
        o = r.get("other_cpu_cores")
        g = r.get("gen_cpu_cores")
        g = "?" if g is None else f"{g:.2f}"
        return (f"{r['server_cpu_cores']:.2f} / {g}"
                + (f" / {o:.2f}" if o is not None else ""))

    def why(rid):
        r = R.get(rid)
        if r is None:
            return "not run"
        if "unavailable" in r:
            return "unavailable: " + r["unavailable"]
        return "no result"

    lines = [
        "| P | scenario | throughput | p50 | p99 | server CPU / op | cores busy: server / load gen / other | ratio (target) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []

    def line(p, scen, rid, ratio_txt="", verdict="", unit="req/s"):
        if ok(rid):
            lines.append(
                f"| {p} | {scen} | {fmt_rate(rps(rid))} {unit} | {fmt_us(res(rid, 'p50_us') or res(rid, 'push_p50_us'))} "
                f"| {fmt_us(res(rid, 'p99_us') or res(rid, 'push_p99_us'))} | {cpu(rid)} | {cores(rid)} "
                f"| {ratio_txt} | {verdict} |")
        else:
            lines.append(f"| {p} | {scen} | {why(rid)} | | | | | {ratio_txt} | {verdict} |")

    def ratio(a, b):
        return a / b if (a is not None and b) else None

    def rtxt(v, target, kind="x"):
        if v is None:
            return f"n/a ({kind}{target})"
        if kind == "%":
            return f"{v * 100:.0f}% (>= {target * 100:.0f}%)"
        return f"{v:.2f}x (>= {target}x)"

    def verdict(pid, what, value, target, higher=True, detail=""):
        s = status(value, target, higher)
        verdicts.append({"p": pid, "what": what, "value": value, "target": target,
                         "status": s, "detail": detail})
        return s

    def pairs(a, b):
        """The rows of two sides run in alternation (A B A B, each on a fresh server) and the
        ratio of their summed req/s; the ratio is None unless all four rows have results."""
        ra, rb = [f"{a}-{i}" for i in (1, 2)], [f"{b}-{i}" for i in (1, 2)]
        if all(ok(x) for x in ra + rb):
            return ratio(sum(rps(x) for x in ra), sum(rps(x) for x in rb)), ra, rb
        return None, ra, rb

    def alternated(p, a, b, ra, rb, r, target, what):
        """The alternating rows of a ratio target (sides named `a` and `b`, each at the main
        size unless it says otherwise) and the verdict line they give."""
        for i in (0, 1):
            line(p, f"{a}, alternating with {b} (run {i + 1})", ra[i])
            line(p, f"{b}, alternating with {a} (run {i + 1})", rb[i])
        lines.append(
            f"| {p} | {a} vs {b} over the alternating runs (req/s summed per side) "
            f"| | | | | | {rtxt(r, target, '%')} | {verdict(p, what, r, target)} |")

    def ratio_target(p, scen, rid, block, pair, sides, target, what, between=()):
        """A ratio target (a share, `target` as a fraction): the block row `rid` (scenario
        `scen`), then `between` (extra rows, as `line` arguments), then the alternating rows.
        The verdict comes from the alternating runs `pair` (side names `sides`), or from
        `block` (the two block rows' ids) when the pairs are missing."""
        rblock = ratio(rps(block[0]), rps(block[1]))
        r, ra, rb = pairs(*pair)
        if r is None:
            line(p, scen, rid, rtxt(rblock, target, "%"), verdict(p, what, rblock, target))
        else:
            line(p, scen, rid, f"(block ratio: {rtxt(rblock, target, '%')})")
        for args in between:
            line(*args)
        if r is not None:
            alternated(p, *sides, ra, rb, r, target, what)

    mc = meta.get("main_connections", 1000)
    # P1
    for c in (1, 100, 1000):
        line("P1", f"ceiling (minimal tokio server), {c} conn", f"p1-c{c}")
    # P2: from Rookery and the ceiling run in alternation (as P3, P4, P5 and P10 are); from the
    # blocks' rows when the pairs are missing.
    ratio_target("P2", f"Rookery one process, {mc} conn", f"p2-c{mc}",
                 (f"p2-c{mc}", f"p1-c{mc}"), ("p2pair-rookery", "p2pair-ceiling"),
                 (f"Rookery, {mc} conn", f"ceiling, {mc} conn"), 0.60,
                 "one-process req/s vs ceiling")
    # For information: the same server with three pass-through middleware layers on the route,
    # in the same alternation; their ratio is what three layers cost.
    pair_l = [f"p2pair-layers3-{i}" for i in (1, 2)]
    pair_0 = [f"p2pair-rookery-{i}" for i in (1, 2)]
    if all(ok(x) for x in pair_l + pair_0):
        for i in (0, 1):
            line("P2", f"(info) Rookery with three pass-through middleware layers, {mc} conn, in "
                 f"the same alternation (run {i + 1})", pair_l[i])
        rl = ratio(sum(rps(x) for x in pair_l), sum(rps(x) for x in pair_0))
        lines.append(
            f"| P2 | (info) three no-op middleware layers vs none over the same alternation "
            f"(req/s summed per side) | | | | | | {rl * 100:.0f}% | |")
    # P3: from Rookery and pinus run in alternation at the main size (rows minutes apart can
    # see the host at different speeds); from the two blocks' rows when the pairs are missing.
    pair_r = [f"p3pair-rookery-{i}" for i in (1, 2)]
    pair_p = [f"p3pair-pinus-{i}" for i in (1, 2)]
    paired = all(ok(x) for x in pair_r + pair_p)
    if paired:
        r = ratio(sum(rps(x) for x in pair_r), sum(rps(x) for x in pair_p))
        p99_r = sum(res(x, "p99_us") for x in pair_r) / 2
        p99_p = sum(res(x, "p99_us") for x in pair_p) / 2
    else:
        r = ratio(rps(f"p2-c{mc}"), rps(f"p3-c{mc}"))
        p99_r, p99_p = res(f"p2-c{mc}", "p99_us"), res(f"p3-c{mc}", "p99_us")
    v = verdict("P3", "Rookery vs pinus req/s", r, 10.0)
    if p99_r is not None and p99_p is not None:
        v2 = "met" if p99_r < p99_p else "MISSED"
        verdicts.append({"p": "P3", "what": "Rookery p99 lower than pinus", "value": p99_r,
                         "target": p99_p, "status": v2, "detail": ""})
        v = f"{v}; p99 {'lower: met' if v2 == 'met' else 'not lower: MISSED'}"
    if paired:
        line("P3", f"pinus 1.7.4 connector + backend, {mc} conn", f"p3-c{mc}",
             f"(block ratio: {rtxt(ratio(rps(f'p2-c{mc}'), rps(f'p3-c{mc}')), 10)})")
    else:
        line("P3", f"pinus 1.7.4 connector + backend, {mc} conn", f"p3-c{mc}", rtxt(r, 10), v)
    for c in (100, 10000):
        if f"p3-c{c}" in R:
            line("P3", f"pinus, {c} conn", f"p3-c{c}")
    if paired:
        for i in (0, 1):
            line("P3", f"Rookery, {mc} conn, alternating with pinus (run {i + 1}; fair "
                 "generator)", pair_r[i])
            line("P3", f"pinus, {mc} conn, alternating with Rookery (run {i + 1}; fair "
                 "generator)", pair_p[i])
        lines.append(
            f"| P3 | Rookery vs pinus over the alternating runs (req/s summed per side; mean p99 "
            f"{fmt_us(p99_r)} vs {fmt_us(p99_p)}) | | | | | | {rtxt(r, 10)} | {v} |")
    # For information: the ceiling's turns in the same alternation; its ratio to pinus is what
    # a server that only frames packets shows against pinus here (the load generator and the
    # kernel's loopback cost per request are common to every server).
    pair_c = [f"p3pair-ceiling-{i}" for i in (1, 2)]
    if paired and all(ok(x) for x in pair_c):
        for i in (0, 1):
            line("P3", f"(info) ceiling, {mc} conn, in the same alternation (run {i + 1}; fair "
                 "generator)", pair_c[i])
        rc = ratio(sum(rps(x) for x in pair_c), sum(rps(x) for x in pair_p))
        rr = ratio(sum(rps(x) for x in pair_r), sum(rps(x) for x in pair_c))
        lines.append(
            f"| P3 | (info) ceiling vs pinus over the same alternation: what a server that only "
            f"frames packets shows (Rookery / ceiling: {rr * 100:.0f}%) | | | | | | {rc:.2f}x | |")
    if ok("p3fair-rookery"):
        rf = ratio(rps("p3fair-rookery"), sum(rps(x) for x in pair_p) / 2) if paired else None
        line("P3", f"(info) Rookery with a fair schedule (global_queue_interval = 4), {mc} conn, "
             "fair generator", "p3fair-rookery",
             f"vs the pinus runs above: {rf:.2f}x" if rf else "", "")
    def proto_pairs(base, base_label, protos, how):
        """Rows of client protocols run in alternation with a base protocol, and each one's
        ratio to it (with a verdict where there is a target)."""
        for proto, label, target in protos:
            rows = [f"{proto}-{i}" for i in (1, 2)]
            if not all(ok(x) for x in rows + base):
                continue
            for i in (0, 1):
                line("C", f"{label}, {mc} conn, alternating with {base_label} ({how}run {i + 1})",
                     rows[i])
            r = ratio(sum(rps(x) for x in rows), sum(rps(x) for x in base))
            scen = (f"| C | {label} vs {base_label} over the alternating runs ({how}req/s summed "
                    "per side) | | | | | | ")
            if target is None:
                lines.append(f"{scen}{r * 100:.0f}% | |")
            else:
                v = verdict("C", f"{label} vs {base_label}", r, target)
                lines.append(f"{scen}{rtxt(r, target, '%')} | {v} |")
        if all(ok(x) for x in base):
            for i in (0, 1):
                line("C", f"{base_label}, {mc} conn, in the same alternation ({how}run {i + 1})",
                     base[i])

    # Client protocols against plain TCP, one process, in alternation (for information; TLS
    # has a target of its own: 70% of plain TCP).
    proto_pairs([f"protopair-tcp-{i}" for i in (1, 2)], "plain TCP",
                (("protopair-tls", "TLS (tls://)", 0.70), ("protopair-ws", "WebSocket", None)), "")
    # MQTT and KCP against pomelo over TCP, all from rookery-protobench (one request in flight
    # per connection); MQTT through mosquitto as the yardstick.
    proto_pairs([f"mqttpair-pomelo-{i}" for i in (1, 2)], "pomelo TCP",
                (("mqttpair-mqtt", "MQTT 3.1.1", 0.80),
                 ("mqttpair-kcp", "KCP (pomelo over UDP)", None)), "protobench; ")
    brk = [f"mqttpair-broker-{i}" for i in (1, 2)]
    mq = [f"mqttpair-mqtt-{i}" for i in (1, 2)]
    if all(ok(x) for x in brk):
        for i in (0, 1):
            line("C", f"(yardstick) MQTT publish/subscribe round trip through mosquitto, {mc} conn "
                 f"(protobench, run {i + 1})", brk[i])
        if all(ok(x) for x in mq):
            r = ratio(sum(rps(x) for x in mq), sum(rps(x) for x in brk))
            lines.append(f"| C | MQTT requests to Rookery vs the same load through mosquitto "
                         f"(req/s summed per side) | | | | | | {r * 100:.0f}% | |")
    # P4, P5 (alternating rows as P2)
    ratio_target("P4", f"remote path over TCP (gateway + backend), {mc} conn", "p4-tcp",
                 ("p4-tcp", f"p2-c{mc}"), ("p4pair-remote", "p4pair-single"),
                 (f"remote over TCP, {mc} conn", f"one process, {mc} conn"), 0.50,
                 "remote TCP vs one process")
    ratio_target("P5", f"remote path over NATS (gateway + backend), {mc} conn", "p5-nats",
                 ("p5-nats", "p5-nats-ceiling"), ("p5pair-rookery", "p5pair-raw"),
                 (f"Rookery over NATS, {mc} conn", f"raw request/reply, {mc} conn"), 0.70,
                 "remote NATS vs raw async-nats request/reply behind a minimal gateway",
                 between=[("P5", "raw async-nats request/reply behind the ceiling's minimal "
                           f"gateway, {mc} conn", "p5-nats-ceiling", "baseline", "")])
    r1 = ratio(rps("p5-nats"), rps("p5-nats-raw"))
    line("P5", f"(info) raw async-nats request/reply from rpcbench on the load core, concurrency {mc}",
         "p5-nats-raw", f"remote path / this: {r1 * 100:.0f}%" if r1 is not None else "", "", "calls/s")
    r2 = ratio(rps("p5-rpc-nats"), rps("p5-nats-raw"))
    line("P5", f"(info) Rookery node-to-node RPC over NATS, concurrency {mc}", "p5-rpc-nats",
         f"this / the row above: {r2 * 100:.0f}%" if r2 is not None else "", "", "calls/s")
    # P6
    for rid, scen, target in (("p6-single", "one process", 1000), ("p6-tcp", "remote TCP", 2000),
                              ("p6-nats", "remote NATS", 2000)):
        p99 = res(rid, "p99_us")
        v = verdict("P6", f"p99 at 50% of max, {scen}", p99, target, higher=False)
        line("P6", f"open loop at 50% of max, {scen}, {mc} conn", rid,
             f"p99 <= {target / 1000:g} ms", v)
    line("P6", f"(control) ceiling, open loop at the one-process P6 rate, {mc} conn", "p6-ceiling",
         "load generator + machine alone", "")
    p99 = res("p6-single-c100", "p99_us")
    line("P6", "open loop at 50% of max, one process, 100 conn", "p6-single-c100", "p99 <= 1 ms",
         verdict("P6", "p99 at 50% of max, one process, 100 connections", p99, 1000, higher=False))
    line("P6", "(control) ceiling, open loop at the rate above, 100 conn", "p6-ceiling-c100",
         "load generator + machine alone", "")
    if "p6-ceiling-low" in R:
        line("P6", "(control) ceiling, open loop at a tenth of that rate, 100 conn", "p6-ceiling-low",
             "the machine's floor", "")
    # P7
    for rid in sorted((k for k in R if k.startswith("p7-")), key=lambda k: int(k[3:])):
        r = R[rid]
        res7 = r.get("result") or {}
        n = res7.get("connections", 0) or r.get("target_connections", 0)
        held, base = r.get("held_rss_kib", 0), r.get("base_rss_kib", 0)
        per = (held - base) / n if n and held else None
        want = r.get("target_connections", n)
        scen = f"idle WebSocket connections: {n:,} held"
        if n != want:
            scen += f" (of {want:,} asked)"
        if per is None:
            lines.append(f"| P7 | {scen} | {why(rid) if 'unavailable' in r else 'no result'} | | | | | | |")
            continue
        v = verdict("P7", f"gateway RSS per idle WS connection at {n:,}", per, 6.0, higher=False,
                    detail=r.get("note", ""))
        if n < 50000:
            v += " (at 50k: not measured here)" if want >= 50000 else ""
        lines.append(
            f"| P7 | {scen} | RSS {base / 1024:.0f} -> {held / 1024:.0f} MiB | | | | | "
            f"{per:.2f} KiB/conn (<= 6 KiB) | {v} |")
    # P8
    d_r, d_p = rps("p8-rookery"), rps("p8-pinus")
    n8 = res("p8-rookery", "users")
    v = verdict("P8", "deliveries/s at the clients", d_r, 500000)
    line("P8", f"broadcast, one room of {n8 or '?'} users (Rookery)", "p8-rookery",
         ">= 500k/s", v, "deliveries/s")
    r = ratio(d_r, d_p)
    line("P8", f"broadcast, pinus channel of {res('p8-pinus', 'users') or '?'} users", "p8-pinus",
         rtxt(r, 5), verdict("P8", "Rookery vs pinus channel push", r, 5.0), "deliveries/s")
    # P9
    r = ratio(rps("p9-rpc-tcp"), rps("p9-tonic"))
    rc = meta.get("rpc_concurrency", 128)
    line("P9", f"Rookery node-to-node RPC over TCP, concurrency {rc}", "p9-rpc-tcp", rtxt(r, 2),
         verdict("P9", "Rookery RPC vs tonic unary", r, 2.0), "calls/s")
    line("P9", f"tonic (gRPC) unary, concurrency {rc}", "p9-tonic", "baseline", "", "calls/s")
    if "p9-rpc-nats" in R:
        line("P9", f"(info) Rookery node-to-node RPC over NATS, concurrency {rc}", "p9-rpc-nats",
             "", "", "calls/s")
    # P10 (alternating rows: 100 and 10,000 connections on the server of the block rows)
    for c in (100, 1000, 10000):
        line("P10", f"Rookery one process, {c:,} conn", f"p2-c{c}")
    rb10 = ratio(rps("p2-c10000"), rps("p2-c100"))
    rc10 = ratio(rps("p1-c10000"), rps("p1-c100"))
    r, ra, rb = pairs("p10pair-c10000", "p10pair-c100")
    what10 = "req/s at 10k connections vs 100"
    if r is None:
        lines.append(
            f"| P10 | req/s at 10,000 conn vs 100 | | | | | | {rtxt(rb10, 0.80, '%')} | "
            f"{verdict('P10', what10, rb10, 0.80)} |")
    else:
        lines.append(
            f"| P10 | req/s at 10,000 conn vs 100 (block rows) | | | | | | "
            f"({rtxt(rb10, 0.80, '%')}) | |")
        alternated("P10", "Rookery at 10,000 conn", "Rookery at 100 conn", ra, rb, r, 0.80,
                   what10)
    line("P10", "(info) ceiling, 10,000 conn", "p1-c10000",
         f"ceiling 10k/100: {rc10 * 100:.0f}%" if rc10 else "")
    r, ra, rb = pairs("p10fair-c10000", "p10fair-c100")
    if r is not None:
        for i in (0, 1):
            line("P10", f"(info) fair schedule (global_queue_interval = 4), 10,000 conn "
                 f"(run {i + 1})", ra[i])
            line("P10", f"(info) fair schedule, 100 conn (run {i + 1})", rb[i])
        lines.append(
            "| P10 | (info) 10,000 conn vs 100 with the fair schedule (req/s summed per side) "
            f"| | | | | | {r * 100:.0f}% | |")
    return lines, verdicts


# ------------------------------------------------------------------------------------------
# The plot: req/s and p99 vs connections, by hand.

COLORS = {"ceiling": "#7f7f7f", "Rookery": "#1f77b4", "pinus": "#2ca02c"}


def series(rows):
    out = {}
    for name, prefix in (("ceiling", "p1-c"), ("Rookery", "p2-c"), ("pinus", "p3-c")):
        pts = []
        for rid, r in rows.items():
            if rid.startswith(prefix) and "result" in r and r.get("rps", 0) > 0:
                c = int(rid[len(prefix):])
                pts.append((c, r["rps"], r["result"].get("p99_us", 0)))
        if pts:
            out[name] = sorted(pts)
    return out


def esc(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def svg_plot(rows, meta, path):
    S = series(rows)
    W, H = 960, 440
    pw, ph = 360, 280           # panel size
    panels = [(80, 70), (560, 70)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
           f'Rookery vs ceiling vs pinus: closed loop, 1 request in flight per connection, '
           f'64-byte JSON echo</text>',
           f'<text x="{W / 2}" y="44" text-anchor="middle" fill="#555">'
           f'{esc(meta.get("date", ""))}, commit {esc(meta.get("commit", ""))}, '
           f'{esc(meta.get("cpu", ""))} x{meta.get("nproc", "?")}, server on core 0, load generator '
           f'on core 1{"" if meta.get("pinned", 1) else " (UNPINNED)"}'
           f'{", quick run" if meta.get("quick") else ""}</text>']
    xs = [1, 10, 100, 1000, 10000]

    def xpos(x0, c):
        return x0 + (math.log10(max(c, 1)) / 4.0) * pw

    # Left panel: req/s, linear.
    x0, y0 = panels[0]
    ymax = max([p[1] for s in S.values() for p in s] + [1]) * 1.1
    step = 10 ** math.floor(math.log10(ymax))
    if ymax / step < 3:
        step /= 2
    out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 8}" text-anchor="middle" font-weight="bold">'
               f'throughput (req/s, higher is better)</text>')
    v = 0.0
    while v <= ymax:
        y = y0 + ph - v / ymax * ph
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_rate(v)}</text>')
        v += step
    # Right panel: p99, log scale.
    x1, y1 = panels[1]
    p99s = [p[2] for s in S.values() for p in s if p[2] > 0] or [1000]
    lo = 10 ** math.floor(math.log10(min(p99s)))
    hi = 10 ** math.ceil(math.log10(max(p99s)))
    if hi <= lo:
        hi = lo * 10
    out.append(f'<text x="{x1 + pw / 2}" y="{y1 - 8}" text-anchor="middle" font-weight="bold">'
               f'p99 latency (log scale, lower is better)</text>')

    def ylog(v):
        return y1 + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    d = lo
    while d <= hi * 1.0001:
        y = ylog(d)
        out.append(f'<line x1="{x1}" y1="{y:.1f}" x2="{x1 + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x1 - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_us(d)}</text>')
        d *= 10
    for (px, py) in panels:
        out.append(f'<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        for c in xs:
            x = xpos(px, c)
            out.append(f'<line x1="{x:.1f}" y1="{py + ph}" x2="{x:.1f}" y2="{py + ph + 5}" stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{py + ph + 18}" text-anchor="middle">{c:,}</text>')
        out.append(f'<text x="{px + pw / 2}" y="{py + ph + 36}" text-anchor="middle">'
                   f'connections (log scale)</text>')
    for name, pts in S.items():
        col = COLORS[name]
        a = " ".join(f"{xpos(x0, c):.1f},{y0 + ph - r / ymax * ph:.1f}" for c, r, _ in pts)
        out.append(f'<polyline points="{a}" fill="none" stroke="{col}" stroke-width="2.5"/>')
        for c, r, _ in pts:
            x, y = xpos(x0, c), y0 + ph - r / ymax * ph
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{col}"/>')
            out.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" fill="{col}" '
                       f'font-size="10">{fmt_rate(r)}</text>')
        b = " ".join(f"{xpos(x1, c):.1f},{ylog(p):.1f}" for c, _, p in pts if p > 0)
        out.append(f'<polyline points="{b}" fill="none" stroke="{col}" stroke-width="2.5"/>')
        for c, _, p in pts:
            if p > 0:
                x, y = xpos(x1, c), ylog(p)
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{col}"/>')
                out.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" fill="{col}" '
                           f'font-size="10">{fmt_us(p)}</text>')
    # Legend.
    lx = 80
    for name in S:
        col = COLORS[name]
        label = {"ceiling": "ceiling (minimal tokio server, canned answer)",
                 "Rookery": "Rookery, one process (room.room.echo)",
                 "pinus": "pinus 1.7.4, connector + backend"}[name]
        out.append(f'<rect x="{lx}" y="{H - 22}" width="14" height="4" fill="{col}"/>')
        out.append(f'<text x="{lx + 20}" y="{H - 16}">{esc(label)}</text>')
        lx += 290
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ------------------------------------------------------------------------------------------

def machine_line(meta):
    return (f"{meta.get('cpu', '?')}, {meta.get('nproc', '?')} cores, "
            f"{meta.get('memory_gib', '?')} GiB, Linux {meta.get('kernel', '?')}; "
            f"{'server on core 0, load generator on core 1 (taskset)' if meta.get('pinned') else 'UNPINNED'}; "
            f"{meta.get('duration', '?')} s per run after {meta.get('warmup', '?')} s warm-up"
            f"{' (QUICK run)' if meta.get('quick') else ''}; commit {meta.get('commit', '?')}"
            f"{' + local changes' if meta.get('dirty') else ''}, {meta.get('date', '')}")


def print_table(data, svg=None):
    rows, meta = data["rows"], data["meta"]
    lines, verdicts = build_table(rows, meta)
    text = "\n".join(lines)
    print()
    print(machine_line(meta))
    print()
    print(text)
    print()
    missed = [v for v in verdicts if v["status"].startswith("MISSED")]
    na = [v for v in verdicts if v["status"] == "n/a"]
    print(f"targets: {len(verdicts) - len(missed) - len(na)} met, {len(missed)} missed, {len(na)} n/a")
    for v in missed:
        print(f"  {v['p']}: {v['what']}: {v['status']}")
    if svg:
        svg_plot(rows, meta, svg)
    return text, verdicts


def cmd_finish(rows_path, meta_path, out_json, out_svg):
    rows = load_rows(rows_path)
    with open(meta_path) as f:
        meta = json.load(f)
    data = {"meta": meta, "rows": rows}
    text, verdicts = print_table(data, out_svg)
    data["verdicts"] = verdicts
    with open(out_json, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    with open(os.path.join(os.path.dirname(out_json), "table.md"), "w") as f:
        f.write(machine_line(meta) + "\n\n" + text + "\n")


def cmd_table(latest, svg=None):
    with open(latest) as f:
        data = json.load(f)
    print_table(data, svg)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    fn = {"add": cmd_add, "unavailable": cmd_unavailable, "get": cmd_get, "meta": cmd_meta,
          "keep-quietest": cmd_keep_quietest,
          "finish": cmd_finish, "table": cmd_table}.get(cmd)
    if fn is None:
        print(__doc__)
        return 2
    fn(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
