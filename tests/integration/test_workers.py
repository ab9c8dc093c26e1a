"""The default worker count. A software slot (SoftHSM) computes on our CPUs:
one worker per CPU. A hardware slot (an HSM: a call mostly waits on the
device) gets 4 per CPU, at least 8, at most 64. Either way the token's
session limit less one (the keyring's login session) caps it, with a
warning, and --workers always wins.

The fault module (tests/faultmod) in front of SoftHSM plays the HSM: its
"C_GetSlotInfo hw-slot" rule reports CKF_HW_SLOT and "C_GetTokenInfo
max-sessions N" a session limit. Both are read when the daemon opens the
token, so the rules are in place before it starts. Each daemon is checked
twice: p11kms_pool_workers on /metrics and the start-up "configuration"
log line (workers, workers_from).
"""

import os
import re
import signal
import time

import pytest

from conftest import MODULE, token_process_pid
from faultctl import FAULT_SO, FaultToken
from opsclient import free_port, scrape, wait_ops



def usable_cpus():
    """CPUs the daemon counts: this process's affinity, lowered by the
    cgroup v2 CPU quota (cpu.max) of its cgroup and those above it."""
    n = len(os.sched_getaffinity(0))
    try:
        with open("/proc/self/cgroup") as f:
            rel = [l[3:].strip() for l in f if l.startswith("0::/")]
    except OSError:
        rel = []
    path = rel[0] if rel else "/"
    while path not in ("", "/"):
        try:
            with open("/sys/fs/cgroup%s/cpu.max" % path) as f:
                quota, period = f.read().split()
            if quota != "max" and int(quota) > 0 and int(period) > 0:
                n = min(n, -(-int(quota) // int(period)))
        except (OSError, ValueError):
            pass
        path = os.path.dirname(path)
    return max(n, 1)


NCPU = usable_cpus()
HW_DEFAULT = min(max(4 * NCPU, 8), 64)
# A session limit below the hardware default but above the CPU count where
# there is room, so the old rule (CPU count, capped) gives another answer.
CAP = max(2, min(HW_DEFAULT - 1, NCPU + 1))
LIMIT = CAP + 1
LOGFMT = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line):
    out = {}
    for k, v in LOGFMT.findall(line):
        if v.startswith('"'):
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[k] = v
    return out


def config_line(d):
    """Fields of the one start-up "configuration" line."""
    lines = [logfmt(l) for l in d.stderr().splitlines()]
    conf = [f for f in lines if f.get("msg") == "configuration"]
    assert len(conf) == 1, "want one configuration line; stderr:\n%s" % (
        d.stderr())
    return conf[0]


def start(spawn, token, faults=None, rules="", workers=None):
    """A daemon on SoftHSM (faults None) or on the fault module with rules
    in place from the start; returns (daemon, workers from /metrics)."""
    port = free_port()
    extra = ["--ops-listen", "127.0.0.1:%d" % port]
    if workers is not None:
        extra += ["--workers", str(workers)]
    if faults is None:
        d = spawn(token, "d", module=MODULE, extra=extra)
    else:
        faults.set(rules)
        d = spawn(FaultToken(token, faults), "d", module=FAULT_SO,
                  extra=extra)
    wait_ops(d, port)
    return d, scrape(port)["p11kms_pool_workers"]


def check(d, metric, want, from_says):
    conf = config_line(d)
    assert metric == want, "p11kms_pool_workers %s, want %d; config %r" % (
        metric, want, conf)
    assert conf.get("workers") == str(want), conf
    assert from_says in conf.get("workers_from", ""), conf


def session_warning(d):
    return [l for l in d.stderr().splitlines() if "level=warn" in l and
            "token allows %d sessions" % LIMIT in l]


def test_software_slot_gets_cpu_count(token, spawn):
    d, w = start(spawn, token)
    check(d, w, NCPU, "software slot")
    assert not session_warning(d)


def test_hardware_slot_gets_4_per_cpu(token, spawn, faults):
    d, w = start(spawn, token, faults, "C_GetSlotInfo hw-slot")
    check(d, w, HW_DEFAULT, "hardware slot: 4 x %d CPU" % NCPU)
    assert not session_warning(d)


def test_fault_module_alone_is_a_software_slot(token, spawn, faults):
    # The hardware slot above comes from the rule, not from the module.
    d, w = start(spawn, token, faults, "")
    check(d, w, NCPU, "software slot")


def test_hardware_slot_capped_by_session_limit(token, spawn, faults):
    d, w = start(spawn, token, faults, "C_GetSlotInfo hw-slot\n"
                 "C_GetTokenInfo max-sessions %d" % LIMIT)
    check(d, w, LIMIT - 1, "token allows %d sessions" % LIMIT)
    assert "hardware slot" in config_line(d)["workers_from"]
    warn = session_warning(d)
    assert len(warn) == 1 and "using %d workers" % (LIMIT - 1) in warn[0], \
        d.stderr()


@pytest.mark.parametrize("case", ["softhsm", "hw-slot", "hw-slot+limit"])
def test_explicit_workers_win(token, spawn, faults, case):
    if case == "softhsm":
        d, w = start(spawn, token, workers=3)
    else:
        rules = "C_GetSlotInfo hw-slot\n"
        if case == "hw-slot+limit":
            rules += "C_GetTokenInfo max-sessions 6\n"   # room for 5
        d, w = start(spawn, token, faults, rules, workers=3)
    check(d, w, 3, "--workers")
    assert "token allows" not in d.stderr(), d.stderr()


SCHED_OTHER, SCHED_BATCH = 0, 3


def worker_threads(d):
    """[(policy, nice)] of the daemon's worker threads (named
    p11kms-worker), and the main thread's nice."""
    pid = token_process_pid(d.proc.pid)    # where the workers run
    base = "/proc/%d/task" % pid
    out, main_nice = [], None
    for tid in os.listdir(base):
        with open(os.path.join(base, tid, "stat")) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): nice is field 19, policy 41.
        nice, policy = int(fields[16]), int(fields[38])
        if int(tid) == pid:
            main_nice = nice
        with open(os.path.join(base, tid, "comm")) as f:
            if f.read().strip() == "p11kms-worker":
                out.append((policy, nice))
    return out, main_nice


@pytest.mark.parametrize("slot", ["software", "hardware"])
def test_worker_scheduling_by_slot(token, spawn, faults, slot):
    # A software token's workers are CPU-bound: SCHED_BATCH (a waking
    # worker never preempts the loop), nice +5. A hardware token's wait on
    # the device and keep SCHED_OTHER, so an answer is picked up at once.
    d, w = start(spawn, token, faults,
                 "C_GetSlotInfo hw-slot" if slot == "hardware" else "",
                 workers=2)
    threads, main_nice = worker_threads(d)
    assert len(threads) == 2, threads
    want = SCHED_BATCH if slot == "software" else SCHED_OTHER
    for policy, nice in threads:
        assert policy == want, (slot, threads)
        assert nice == min(main_nice + 5, 19), (threads, main_nice)


def test_reload_line_says_where_workers_came_from(token, spawn, faults):
    # A reload recomputes the count (the token may have changed): its log
    # line gives the count and how it was chosen, as the start-up line does.
    d, w = start(spawn, token, faults, "C_GetSlotInfo hw-slot")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "reloaded:" not in d.stderr():
        time.sleep(0.05)
    line = [l for l in d.stderr().splitlines() if "reloaded:" in l]
    assert line, d.stderr()
    assert "workers=%d workers_from=\"hardware slot: 4 x %d CPU" % (
        HW_DEFAULT, NCPU) in line[0], line[0]


@pytest.mark.parametrize("slot", ["software", "hardware"])
def test_counts_only_cpus_it_may_use(token, spawn, faults, slot):
    # Pinned to one CPU (taskset, a container's cpuset), the daemon counts
    # one: a software slot gets 1 worker, a hardware slot 8 (4 x 1, at
    # least 8), whatever the machine has.
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(saved)})   # the daemon inherits it
        d, w = start(spawn, token, faults,
                     "C_GetSlotInfo hw-slot" if slot == "hardware" else "")
    finally:
        os.sched_setaffinity(0, saved)
    if slot == "software":
        check(d, w, 1, "software slot")
    else:
        check(d, w, 8, "hardware slot: 4 x 1 CPU, at least 8")


def test_busy_poll_in_the_configuration_line(token, spawn):
    """--busy-poll is said at start: auto (on with 2 or more usable CPUs,
    off with one), or off."""
    d = spawn(token, "d")
    want = "auto (on)" if len(os.sched_getaffinity(0)) >= 2 else \
        "auto (off: one CPU)"
    assert config_line(d).get("busy_poll") == want, config_line(d)
    d.stop()
    d = spawn(token, "e", extra=["--busy-poll", "off"])
    assert config_line(d).get("busy_poll") == "off", config_line(d)
