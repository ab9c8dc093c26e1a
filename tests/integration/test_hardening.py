"""Process hardening at start: no core dumps, not ptraceable, memory locked
where RLIMIT_MEMLOCK allows, and a log line saying what was applied."""

import os
import shutil
import subprocess

import pytest

from conftest import Daemon, make_token

SANITIZED = "asan" in os.environ.get("P11KMS", "")


def limits(pid):
    with open("/proc/%d/limits" % pid) as f:
        return f.read()


def status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return None


def test_no_core_dumps_and_log_line(token, spawn):
    d = spawn(token)
    line = [l for l in limits(d.proc.pid).splitlines()
            if l.startswith("Max core file size")][0]
    assert line.split()[4] == "0" and line.split()[5] == "0", line
    log = d.stderr()
    assert "hardening: core dumps off" in log
    if not SANITIZED:
        assert "not dumpable/ptraceable" in log


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="no prlimit")
def test_memory_locked_when_permitted(tmp_path, pb):
    if SANITIZED:
        pytest.skip("ASan maps terabytes of shadow; no mlockall there")
    if subprocess.run(["prlimit", "--memlock=unlimited", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine may not raise RLIMIT_MEMLOCK "
                    "(no CAP_SYS_RESOURCE); the not-locked report is "
                    "tested instead")
    tok = make_token(os.path.join(str(tmp_path), "tok"))
    d = Daemon(tok, os.path.join(str(tmp_path), "d"))
    d.args = ["prlimit", "--memlock=unlimited"] + d.args
    try:
        d.start(pb)
        assert "memory locked (mlockall)" in d.stderr()
        locked = int(status(d.proc.pid, "VmLck").split()[0])
        assert locked > 0
    finally:
        d.kill_quietly()


def test_memory_not_locked_is_reported(token, spawn):
    if SANITIZED:
        pytest.skip("sanitizer build does not lock")
    d = spawn(token)
    log = d.stderr()
    if "memory locked (mlockall)" in log:      # an unlimited environment
        assert int(status(d.proc.pid, "VmLck").split()[0]) > 0
    else:
        assert "memory not locked (RLIMIT_MEMLOCK is" in log
        assert status(d.proc.pid, "VmLck").split()[0] == "0"
