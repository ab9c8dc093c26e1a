#!/usr/bin/python3
"""Side-by-side table of two p11kms-bench runs: --token-process=off (the
in-process baseline) and on. Reads the BENCH_JSON line of each output file
and prints, per scenario both ran, throughput on/off, server CPU per
request over all the daemon's processes (on - off, us), latency p50/p99,
and the daemons' peak RSS (front + token process).

    compare.py OFF.out ON.out
"""
import json
import sys


def bench_json(path):
    with open(path) as f:
        for line in f:
            if line.startswith("BENCH_JSON "):
                return json.loads(line[len("BENCH_JSON "):])
    raise SystemExit("compare.py: no BENCH_JSON line in %s" % path)


def num(d, k):
    v = d.get(k)
    return v if isinstance(v, (int, float)) else None


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    off, on = bench_json(argv[1]), bench_json(argv[2])
    so, sn = off.get("scenarios", {}), on.get("scenarios", {})
    print()
    print("token process: off (in-process baseline) vs on, same machine, "
          "same run")
    print("%-28s %10s %10s %7s %9s %9s %9s %9s %9s" % (
        "scenario", "off ops/s", "on ops/s", "on/off", "cpu off", "cpu on",
        "cpu +us", "p99 off", "p99 on"))
    for key, o in so.items():
        n = sn.get(key)
        if n is None or "na" in o or "na" in n:
            continue
        oo, no = num(o, "ops"), num(n, "ops")
        co, cn = num(o, "server_cpu_us_per_req"), num(n, "server_cpu_us_per_req")
        ratio = no / oo if oo and no is not None else float("nan")
        dcpu = cn - co if co is not None and cn is not None else float("nan")
        print("%-28s %10.0f %10.0f %7.2f %9s %9s %9s %9.0f %9.0f" % (
            key[:28], oo or 0, no or 0, ratio,
            "%.1f" % co if co is not None else "-",
            "%.1f" % cn if cn is not None else "-",
            "%+.1f" % dcpu if dcpu == dcpu else "-",
            num(o, "p99_us") or 0, num(n, "p99_us") or 0))
    do, dn = off.get("daemon", {}), on.get("daemon", {})

    def mib(v):
        return "%.1f MiB" % (v / 1024.0) if isinstance(v, (int, float)) \
            and v >= 0 else "n/a"
    tok = dn.get("rss_peak_token_kib", -1)
    tot = dn.get("rss_peak_kib", -1)
    print("peak RSS: off %s (one process); on %s = front %s + spawner and "
          "token process %s" % (mib(do.get("rss_peak_kib", -1)), mib(tot),
                                 mib(tot - tok if tot >= 0 and tok >= 0
                                     else -1), mib(tok)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
