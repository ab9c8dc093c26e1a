"""What a supervisor and an operator see of a running daemon: the systemd
notification protocol (read from a datagram NOTIFY_SOCKET made here),
`p11kms reload` and its outcome, `p11kms status` in text and JSON, and the
logs a reload switches (log-format, log-level) with numbers as numbers."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import MODULE, Token, binary, make_token
from opsclient import free_port, http, scrape, wait_ops


class NotifyToken(Token):
    """A token whose daemons get extra environment (NOTIFY_SOCKET...)."""

    def __init__(self, tok, **env):
        super().__init__(tok.dir, token=tok.token, pin=tok.pin)
        self.extra = env

    def env(self):
        e = super().env()
        e.update(self.extra)
        return e


class Notify:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen = []

    def next(self, timeout=15.0):
        """The next message as {VAR: value}; AssertionError on timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            raise AssertionError("no notification in %.0f s; seen %r" %
                                 (timeout, self.seen))
        msg = dict(l.split("=", 1) for l in data.split("\n") if "=" in l)
        self.seen.append(msg)
        return msg

    def until(self, var, timeout=15.0, skip=("WATCHDOG",)):
        """Messages up to the first one that sets var (others skipped
        only when they set nothing but a var in skip)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.next(max(0.1, deadline - time.monotonic()))
            if var in m:
                return m
            assert set(m) <= set(skip), "unexpected %r before %s" % (m, var)

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = Notify(str(tmp_path / "notify.sock"))
    yield n
    n.close()


def write_config(path, tok, keys=("kek1",), extra=""):
    """The config file; its socket is next to it (put it in the daemon's
    working folder, where Daemon looks for kms.sock)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["module = %s" % MODULE, "pin-file = %s" % tok.pin_file,
             "socket = %s" % os.path.join(os.path.dirname(path), "kms.sock")]
    lines += ["key = %s" % tok.uri(k) for k in keys]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + extra)


@pytest.fixture
def cd(tmp_path, token, spawn):
    """A daemon reading a config file, with an ops endpoint and pid file:
    (daemon, config path, ops address)."""
    port = free_port()
    wd = tmp_path / "cd"
    wd.mkdir()
    conf = str(wd / "p11kms.conf")
    extra = ("ops-listen = 127.0.0.1:%d\npid-file = %s\n" %
             (port, wd / "p11kms.pid"))
    write_config(conf, token, extra=extra)
    d = spawn(token, "cd", args=["--config", conf])
    wait_ops(d, port)
    return d, conf, "127.0.0.1:%d" % port


def ctl(*args, timeout=90):
    return subprocess.run([binary(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# systemd notifications


def test_notify_ready_only_once_the_socket_serves(token, spawn, pb, notify):
    t = NotifyToken(token, NOTIFY_SOCKET=notify.path)
    d = spawn(t, "n", start=False)
    d.spawn()
    m = notify.until("READY")
    assert m["READY"] == "1"
    assert m["STATUS"].startswith("serving key_id="), m
    # READY=1 means a client is answered now, not soon.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket)
    s.close()
    d.wait_ready(pb, timeout=2)


def test_notify_no_ready_when_start_fails(token, spawn, notify, tmp_path):
    t = NotifyToken(token, NOTIFY_SOCKET=notify.path)
    d = spawn(t, "bad", start=False, keys=["no-such-key"])
    d.spawn()
    assert d.wait_exit() == 2
    notify.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify.sock.recv(4096)


def test_notify_reload_reports_result_and_stopping(token, spawn, pb, notify,
                                                    tmp_path):
    conf = str(tmp_path / "n" / "n.conf")
    write_config(conf, token)
    t = NotifyToken(token, NOTIFY_SOCKET=notify.path)
    d = spawn(t, "n", args=["--config", conf])
    notify.until("READY")
    d.proc.send_signal(signal.SIGHUP)
    assert notify.until("RELOADING")["RELOADING"] == "1"
    m = notify.until("READY")
    assert m["STATUS"].startswith("reloaded: 1 key(s), key_id="), m
    # A key that is not there: the reload fails, READY=1 again (the old
    # configuration serves) with the reason in STATUS.
    write_config(conf, token, keys=("kek-missing",))
    d.proc.send_signal(signal.SIGHUP)
    notify.until("RELOADING")
    m = notify.until("READY")
    assert m["STATUS"].startswith("reload failed, serving the old "
                                  "configuration: "), m
    assert "kek-missing" in m["STATUS"], m
    d.proc.send_signal(signal.SIGTERM)
    assert notify.until("STOPPING")["STOPPING"] == "1"
    assert d.wait_exit() == 0


def test_notify_watchdog_only_when_asked(token, spawn, notify):
    t = NotifyToken(token, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="600000")
    spawn(t, "w")
    notify.until("READY")
    t0 = time.monotonic()
    for _ in range(3):
        assert notify.next(3.0).get("WATCHDOG") == "1"
    # Twice per interval (0.3 s here), not once a second.
    assert time.monotonic() - t0 < 2.5

    # WATCHDOG_PID names another process: that watchdog is not ours.
    n2 = Notify(notify.path + ".2")
    try:
        other = NotifyToken(token, NOTIFY_SOCKET=n2.path,
                            WATCHDOG_USEC="600000", WATCHDOG_PID="1")
        spawn(other, "w2")
        n2.until("READY")
        with pytest.raises(AssertionError):
            n2.next(1.5)
    finally:
        n2.close()
    # Without WATCHDOG_USEC: READY and nothing more.
    n3 = Notify(notify.path + ".3")
    try:
        spawn(NotifyToken(token, NOTIFY_SOCKET=n3.path), "w3")
        n3.until("READY", skip=())
        with pytest.raises(AssertionError):
            n3.next(1.5)
    finally:
        n3.close()


def test_notify_socket_unusable_is_a_warning(token, spawn):
    t = NotifyToken(token, NOTIFY_SOCKET="relative/path")
    d = spawn(t, "r")
    assert "NOTIFY_SOCKET 'relative/path' is not an absolute path" in \
        d.stderr(), d.stderr()


# --------------------------------------------------------------------------
# p11kms reload


def test_reload_reports_success(cd):
    d, conf, ops = cd
    r = ctl("reload", "--config", conf)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("p11kms: reloaded: 1 key(s), key_id="), \
        r.stdout
    m = scrape(int(ops.split(":")[1]))
    assert m['p11kms_reloads_total{result="ok"}'] == 1
    assert m['p11kms_reloads_total{result="failed"}'] == 0
    assert m["p11kms_last_reload_successful"] == 1
    assert abs(m["p11kms_last_reload_success_timestamp_seconds"] -
               time.time()) < 30


def test_reload_failure_exits_1_with_the_reason(cd, token, client_for):
    d, conf, ops = cd
    before = client_for(d).status().key_id
    text = open(conf).read().replace("object=kek1", "object=gone")
    open(conf, "w").write(text)
    r = ctl("reload", "--config", conf)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("p11kms: reload failed, still serving the "
                               "old configuration: "), r.stderr
    assert "gone" in r.stderr, r.stderr
    assert d.alive() and client_for(d).status().key_id == before
    m = scrape(int(ops.split(":")[1]))
    assert m['p11kms_reloads_total{result="failed"}'] == 1
    assert m["p11kms_last_reload_successful"] == 0
    st = http(int(ops.split(":")[1]), "/status")[2]
    assert "reload_result failed\n" in st, st


def test_reload_by_pid_and_pid_file(cd, tmp_path):
    d, conf, ops = cd
    pidfile = str(tmp_path / "cd" / "p11kms.pid")
    assert open(pidfile).read() == "%d\n" % d.proc.pid
    r = ctl("reload", "--config", "/dev/null", "--pid", str(d.proc.pid),
            "--ops", ops)
    assert r.returncode == 0, r.stderr
    r = ctl("reload", "--config", "/dev/null", "--pid-file", pidfile,
            "--ops", ops)
    assert r.returncode == 0, r.stderr
    assert http(int(ops.split(":")[1]), "/status")[2].count(
        "reload_completed 2\n") == 1
    d.stop()
    assert not os.path.exists(pidfile), "pid file left behind at exit"


def test_reload_refuses_what_it_cannot_do(cd, tmp_path):
    d, conf, ops = cd
    r = ctl("reload", "--config", "/dev/null")
    assert r.returncode == 2 and "give --pid" in r.stderr, r.stderr
    r = ctl("reload", "--config", "/dev/null", "--pid", "999999999",
            "--ops", ops)
    assert r.returncode == 2, r.stderr
    assert "belongs to process %d" % d.proc.pid in r.stderr, r.stderr
    r = ctl("reload", "--config", "/dev/null", "--pid-file",
            str(tmp_path / "nope.pid"))
    assert r.returncode == 2 and "is p11kms running?" in r.stderr, r.stderr
    r = ctl("reload", "--config", str(tmp_path / "missing.conf"))
    assert r.returncode == 2 and "missing.conf" in r.stderr, r.stderr
    r = ctl("reload", "--json")
    assert r.returncode == 2 and "unknown option '--json'" in r.stderr
    r = ctl("reload", "--timeout", "0")
    assert r.returncode == 2 and "--timeout" in r.stderr


def test_reload_without_ops_endpoint_says_the_outcome_is_unknown(
        token, spawn, pb):
    d = spawn(token, "plain")
    r = ctl("reload", "--config", "/dev/null", "--pid", str(d.proc.pid))
    assert r.returncode == 0, r.stderr
    assert "not known" in r.stderr, r.stderr
    deadline = time.monotonic() + 10
    while "reloaded:" not in d.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reloaded:" in d.stderr()


# --------------------------------------------------------------------------
# p11kms status


def test_status_healthy_text_and_json(cd, client_for):
    d, conf, ops = cd
    key_id = client_for(d).status().key_id
    r = ctl("status", "--config", conf)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = dict(l.split(None, 1) for l in r.stdout.splitlines())
    assert lines["state"] == "healthy"
    assert lines["status"] == "version v2, healthz ok, key_id %s" % key_id
    assert lines["token"] == "up"
    assert lines["daemon"].endswith("pid %d" % d.proc.pid)
    assert lines["keys"] == "1, key_id %s encrypts" % key_id
    assert lines["workers"].split()[0].isdigit()
    assert lines["reload"] == "none since start"

    r = ctl("status", "--config", conf, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["state"] == "healthy" and j["reason"] == ""
    assert j["kms"] == {"version": "v2", "healthz": "ok", "key_id": key_id}
    assert j["ops"]["healthz_code"] == 200
    assert j["ops"]["pid"] == d.proc.pid
    assert j["ops"]["token"] == "up"
    assert isinstance(j["ops"]["workers"], int) and j["ops"]["workers"] > 0
    assert j["ops"]["reload_result"] == "none"

    assert ctl("reload", "--config", conf).returncode == 0
    j = json.loads(ctl("status", "--config", conf, "--json").stdout)
    assert j["ops"]["reload_result"] == "ok"
    assert abs(j["ops"]["reload_time"] - time.time()) < 30


def test_status_unreachable_exits_2(tmp_path):
    r = ctl("status", "--config", "/dev/null", "--socket",
            str(tmp_path / "none.sock"))
    assert r.returncode == 2, r.stdout
    assert r.stdout.startswith("state      UNREACHABLE: KMS Status: "
                               "connect "), r.stdout
    j = json.loads(ctl("status", "--config", "/dev/null", "--socket",
                       str(tmp_path / "none.sock"), "--json").stdout)
    assert j["state"] == "unreachable" and "error" in j["kms"]
    assert j["ops"] is None


def test_status_unhealthy_exits_1_with_the_reason(token, faults, spawn):
    from faultctl import FAULT_SO, FaultToken
    port = free_port()
    d = spawn(FaultToken(token, faults), "f", module=FAULT_SO,
              extra=["--probe-interval", "1", "--ops-listen",
                     "127.0.0.1:%d" % port])
    wait_ops(d, port)
    faults.set("* CKR_DEVICE_REMOVED")
    deadline = time.monotonic() + 20
    while True:
        r = ctl("status", "--config", "/dev/null", "--socket", d.socket,
                "--ops", "127.0.0.1:%d" % port)
        if r.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 1, r.stdout
    assert r.stdout.startswith("state      UNHEALTHY: "), r.stdout
    faults.clear()


# --------------------------------------------------------------------------
# logs


def test_json_logs_are_json_with_numbers_as_numbers(token, spawn):
    d = spawn(token, "j", extra=["--log-format", "json", "--workers", "3"])
    recs = [json.loads(l) for l in d.stderr().splitlines()]
    serving = [r for r in recs if r["msg"] == "serving"]
    assert serving, recs
    assert serving[0]["workers"] == 3 and serving[0]["max_inflight"] == 1024
    conf = [r for r in recs if r["msg"] == "configuration"][0]
    assert conf["workers"] == 3 and conf["probe_interval_s"] == 10
    assert isinstance(serving[0]["key_id"], str)


def test_reload_applies_log_format_and_level(token, spawn, tmp_path):
    conf = str(tmp_path / "l" / "l.conf")
    write_config(conf, token)
    d = spawn(token, "l", args=["--config", conf])
    assert d.stderr().startswith("ts=")
    write_config(conf, token, extra="log-format = json\nlog-level = debug\n")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded: new configuration serving" not in d.stderr():
        assert time.monotonic() < deadline, d.stderr()
        time.sleep(0.05)
    tail = d.stderr().split("SIGHUP: reloading the configuration")[1]
    lines = tail.splitlines()[1:]
    recs = [json.loads(l) for l in lines]
    r = [x for x in recs if x["msg"].startswith("reloaded")][0]
    assert r["log_format"] == "json" and r["log_level"] == "debug"
    assert isinstance(r["keys"], int) and isinstance(r["workers"], int)
    # Back to logfmt at info: debug lines stop.
    write_config(conf, token)
    n = d.stderr().count("reloaded: new configuration serving")
    d.proc.send_signal(signal.SIGHUP)
    while d.stderr().count("reloaded: new configuration serving") == n:
        assert time.monotonic() < deadline + 10, d.stderr()
        time.sleep(0.05)
    last = d.stderr().splitlines()[-1]
    assert last.startswith("ts="), last


# --------------------------------------------------------------------------
# subcommands


def test_unknown_subcommand_lists_the_real_ones():
    r = ctl("bogus")
    assert r.returncode == 2
    assert r.stderr.startswith("p11kms: unknown subcommand 'bogus'; the "
                               "subcommands are:\n"), r.stderr
    for cmd in ("keygen", "keys", "selftest", "status", "reload",
                "audit-verify"):
        assert "\n  p11kms %s " % cmd in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["status", "reload"])
def test_control_subcommand_help(cmd):
    r = ctl(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith(
        "Usage: p11kms %s " % cmd), r.stdout
    assert "Exit status:" in r.stdout
