#!/usr/bin/python3
"""Side-by-side table of two p11kms-bench runs: --token-process=off (the
in-process baseline) and on. Reads the BENCH_JSON line of each output file
and prints, per scenario both ran, throughput on/off, server CPU per
request over all the daemon's processes (on - off, us), latency p50/p99,
and the daemons' peak RSS (front + token process); then the c=1 floor
(served p50 against echo round trip + raw op, the echo rows being the
bench's own echo server, the same in both runs) and Status p99 on a 2nd
connection idle and beside Encrypt c=1, off and on.

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


def us(v):
    return "%.0f" % v if v is not None else "-"


def fig(v, fmt="%.1f"):
    return fmt % v if isinstance(v, (int, float)) else "-"


def floor_table(off, on):
    """c=1 against its floor, and Status beside a lone Encrypt: off, on."""
    rows = []
    for key, what in (("v2_encrypt_c1", "v2 Encrypt c=1"),
                      ("v2_decrypt_c1", "v2 Decrypt c=1")):
        for mode, d in (("off", off), ("on", on)):
            r = d.get("scenarios", {}).get(key, {})
            f = r.get("floor")
            if f is None:
                continue
            rows.append("%-18s %-4s %8s %8s %8s %8s %8s %8s" % (
                what, mode, fig(num(r, "p50_us"), "%.0f"),
                fig(num(r, "p99_us"), "%.0f"), fig(num(f, "echo_p50_us")),
                fig(num(f, "raw_p50_us")), fig(num(f, "floor_p50_us")),
                fig(num(f, "ratio_p50"), "%.2f")))
    if rows:
        print()
        print("c=1 against its floor (echo round trip + raw op p50, same "
              "rounds; target p50/floor <= 1.5), us")
        print("%-18s %-4s %8s %8s %8s %8s %8s %8s" % (
            "", "tp", "p50", "p99", "echo p50", "raw p50", "floor",
            "p50/flr"))
        for line in rows:
            print(line)
    rows = []
    for mode, d in (("off", off), ("on", on)):
        sc = d.get("scenarios", {})
        i, b = sc.get("status2_idle"), sc.get("status2_encrypt_c1")
        if i is None or b is None:
            continue
        t = d.get("targets", {}).get("status_p99_encrypt_c1_vs_idle", {})
        rows.append("%-18s %-4s %8s %8s %8s" % (
            "Status 2nd conn", mode, fig(num(i, "p99_us"), "%.0f"),
            fig(num(b, "p99_us"), "%.0f"), fig(num(t, "value"), "%.2f")))
    if rows:
        print()
        print("Status p99 on a 2nd connection, idle and beside Encrypt c=1 "
              "(target beside/idle <= 1), us")
        print("%-18s %-4s %8s %8s %8s" % ("", "tp", "idle", "beside",
                                          "ratio"))
        for line in rows:
            print(line)


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    off, on = bench_json(argv[1]), bench_json(argv[2])
    so, sn = off.get("scenarios", {}), on.get("scenarios", {})
    print()
    print("token process: off (in-process baseline) vs on, same machine, "
          "same run")
    print("%-28s %10s %10s %7s %9s %9s %9s %8s %8s %8s %8s" % (
        "scenario", "off ops/s", "on ops/s", "on/off", "cpu off", "cpu on",
        "cpu +us", "p50 off", "p50 on", "p99 off", "p99 on"))
    for key, o in so.items():
        n = sn.get(key)
        if n is None or "na" in o or "na" in n:
            continue
        oo, no = num(o, "ops"), num(n, "ops")
        co, cn = num(o, "server_cpu_us_per_req"), num(n, "server_cpu_us_per_req")
        ratio = no / oo if oo and no is not None else float("nan")
        dcpu = cn - co if co is not None and cn is not None else float("nan")
        print("%-28s %10.0f %10.0f %7.2f %9s %9s %9s %8s %8s %8s %8s" % (
            key[:28], oo or 0, no or 0, ratio,
            "%.1f" % co if co is not None else "-",
            "%.1f" % cn if cn is not None else "-",
            "%+.1f" % dcpu if dcpu == dcpu else "-",
            us(num(o, "p50_us")), us(num(n, "p50_us")),
            us(num(o, "p99_us")), us(num(n, "p99_us"))))
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
    floor_table(off, on)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
