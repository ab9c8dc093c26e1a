"""Connection bursts and the --max-connections cap.

A hostile local client opening thousands of connections must not lock the
apiserver out: the listening backlog is SOMAXCONN, a wake-up accepts many,
the open-file limit is raised to its hard limit at start, and at the cap
the oldest connection with no call open makes room for the new one.
Every daemon is stopped by PID at teardown (spawn fixture).
"""

import resource
import socket
import time

import pytest

from conftest import RPC_TIMEOUT

BURST = 2000
IDLE = 1000


def raise_own_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip("this test needs %d open files (hard limit %d)"
                        % (n, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def closed_by_server(s, timeout):
    """True when the server closes s within timeout (after its SETTINGS
    frame, which every connection gets first)."""
    s.settimeout(timeout)
    try:
        while True:
            if s.recv(4096) == b"":
                return True
    except socket.timeout:
        return False


def test_status_within_1s_after_a_burst_and_idle_connections(token, spawn,
                                                             client_for):
    raise_own_nofile(BURST + IDLE + 256)
    d = spawn(token)
    # Its soft limit was raised to the hard one at start.
    with open("/proc/%d/limits" % d.proc.pid) as f:
        line = [x for x in f if x.startswith("Max open files")][0].split()
    assert line[3] == line[4], "soft open-file limit not raised: %s" % line
    burst = [connect(d.socket) for _ in range(BURST)]
    for s in burst:
        s.close()
    idle = [connect(d.socket) for _ in range(IDLE)]
    try:
        c = client_for(d)
        # A fresh client's Status, with a 1 s deadline, over a fresh
        # connection.
        t0 = time.monotonic()
        r = c.status(timeout=1.0)
        assert r.healthz == "ok"
        assert time.monotonic() - t0 < 1.0
        assert d.alive()
    finally:
        for s in idle:
            s.close()


def test_max_connections_closes_the_oldest_idle(token, spawn, client_for):
    cap = 8
    d = spawn(token, extra=["--max-connections", str(cap)])
    idle = [connect(d.socket) for _ in range(cap)]
    try:
        c = client_for(d)
        assert c.status(timeout=RPC_TIMEOUT).healthz == "ok"
        # The oldest idle connection was closed to make room ...
        assert closed_by_server(idle[0], 5), "the oldest idle one is open"
        # ... and only that one: the newest still waits for its preface.
        assert not closed_by_server(idle[-1], 0.3)
        # The cap holds for the next client too.
        c2 = client_for(d)
        assert c2.status(timeout=RPC_TIMEOUT).healthz == "ok"
        assert closed_by_server(idle[1], 5)
    finally:
        for s in idle:
            s.close()


def test_max_connections_flag_checked(token, spawn):
    from conftest import run_p11kms
    r = run_p11kms(["--max-connections", "0", "-k", token.uri(), "-p",
                    token.pin_file], env=token.env(), timeout=10)
    assert r.returncode == 2, r.stderr
    assert "--max-connections" in r.stderr
