"""Signals while the token hangs, and the subcommands' hardening: SIGTERM
ends a daemon whose start-up hangs in the module (C_Login here, through the
fault module); shutdown waits for a reload hung in the token for --grace at
most; keygen, keys and selftest harden the process as the daemon does
(RLIMIT_CORE 0, memory locked where RLIMIT_MEMLOCK allows), seen in /proc
while they hang in C_Login. Every wait is bounded."""

import os
import resource
import signal
import subprocess
import time

import pytest

from conftest import binary, make_token
from faultctl import FAULT_SO, FaultToken

HANG_SETTLE = 1.0         # seconds for a process to reach the hung call
EXIT_BOUND = 4.0          # seconds from SIGTERM to exit, at most


def popen(args, env, tmp_path, name):
    err = open(os.path.join(str(tmp_path), name + ".stderr"), "wb")

    def limits():
        # A core limit and memlock the process must change itself.
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                  resource.RLIM_INFINITY))
        try:    # needs CAP_SYS_RESOURCE; a container may refuse
            resource.setrlimit(resource.RLIMIT_MEMLOCK,
                               (resource.RLIM_INFINITY,
                                resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
    return subprocess.Popen([binary()] + args, env=env, stdout=err,
                            stderr=err, stdin=subprocess.DEVNULL,
                            preexec_fn=limits), err.name


def wait_calls(faults, fn, n=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while faults.count(fn) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert faults.count(fn) >= n, faults.counts()


def bounded_exit(p, bound):
    t0 = time.monotonic()
    try:
        rc = p.wait(bound)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        raise AssertionError("still running %.1f s after SIGTERM" % bound)
    return rc, time.monotonic() - t0


def daemon_args(tok, tmp_path, extra=()):
    return ["-s", os.path.join(str(tmp_path), "kms.sock"), "-k", tok.uri(),
            "-m", FAULT_SO, "-p", tok.pin_file] + list(extra)


def test_sigterm_ends_startup_hung_in_login(token, faults, tmp_path):
    faults.set("C_Login hang")
    p, errpath = popen(daemon_args(token, tmp_path),
                       FaultToken(token, faults).env(), tmp_path, "d")
    try:
        wait_calls(faults, "C_Login")
        time.sleep(HANG_SETTLE)
        assert p.poll() is None, open(errpath).read()
        p.send_signal(signal.SIGTERM)
        rc, took = bounded_exit(p, EXIT_BOUND)
    finally:
        faults.clear()
        if p.poll() is None:
            p.kill()
            p.wait(5)
    err = open(errpath).read()
    assert rc == 0, "exit %d; stderr:\n%s" % (rc, err)
    assert "during start-up" in err, err
    assert not os.path.exists(os.path.join(str(tmp_path), "kms.sock"))


def test_shutdown_waits_grace_for_hung_reload(token, faults, tmp_path, pb):
    from conftest import Daemon
    d = Daemon(FaultToken(token, faults), os.path.join(str(tmp_path), "d"),
               module=FAULT_SO, extra=["--grace", "1"])
    d.start(pb)
    try:
        faults.set("C_Login hang")
        n = faults.count("C_Login")
        d.proc.send_signal(signal.SIGHUP)
        wait_calls(faults, "C_Login", n + 1)
        time.sleep(HANG_SETTLE)
        d.proc.send_signal(signal.SIGTERM)
        rc, took = bounded_exit(d.proc, 1 + EXIT_BOUND)
    finally:
        faults.clear()
        d.kill_quietly()
    err = d.stderr()
    assert "reload is still inside the token" in err, err
    assert rc == 0, "exit %d; stderr:\n%s" % (rc, err)


def sanitizer_build():
    return os.path.basename(os.path.dirname(binary())).startswith("build-")


def proc_field(pid, name, path="status"):
    with open("/proc/%d/%s" % (pid, path)) as f:
        for line in f:
            if line.startswith(name):
                return line
    return ""


@pytest.mark.parametrize("cmd", ["keygen", "keys", "selftest"])
def test_subcommands_harden_like_the_daemon(token, faults, tmp_path, cmd):
    args = {"keygen": ["keygen", "-m", FAULT_SO, "-p", token.pin_file,
                       "pkcs11:token=kms;object=new1"],
            "keys": ["keys", "-m", FAULT_SO, "-p", token.pin_file,
                     "pkcs11:token=kms"],
            "selftest": ["selftest"] + daemon_args(token, tmp_path)}[cmd]
    faults.set("C_Login hang")
    p, errpath = popen(args, FaultToken(token, faults).env(), tmp_path, cmd)
    try:
        wait_calls(faults, "C_Login")
        time.sleep(0.3)
        assert p.poll() is None, open(errpath).read()
        core = proc_field(p.pid, "Max core file size", "limits").split()
        locked = proc_field(p.pid, "VmLck:").split()
        memlock = proc_field(p.pid, "Max locked memory", "limits").split()
    finally:
        p.kill()
        p.wait(5)
        faults.clear()
    # "Max core file size  0  0  bytes"
    assert core[4:6] == ["0", "0"], "core dumps still on: %s" % core
    # mlockall only under an unlimited RLIMIT_MEMLOCK (harden.c).
    if not sanitizer_build() and memlock[3] == "unlimited":
        assert int(locked[1]) > 0, "memory not locked: %s" % locked
