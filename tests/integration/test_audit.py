"""The audit log (--audit-log): records of a real daemon, audit-verify on
intact and tampered files, rotation, copytruncate, a full disk under each
--audit-failure mode, peer credentials and the request uid."""

import json
import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from conftest import binary, rand_suffix, rpc_error
from h2client import H2
from opsclient import free_port, http, scrape, wait_ops


def records(path):
    with open(path, "rb") as f:
        return [json.loads(l) for l in f.read().splitlines() if l.strip()]


def verify(*paths, live=False):
    args = [binary(), "audit-verify"] + (["--live"] if live else []) + \
        list(paths)
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def requests_in(path, **match):
    return [r for r in records(path) if r.get("type") == "request" and
            all(r.get(k) == v for k, v in match.items())]


def round_trip(c, uid):
    pt = os.urandom(32)
    enc = c.encrypt(pt, uid=uid)
    dec = c.decrypt(enc.ciphertext, enc.key_id, enc.annotations, uid=uid)
    assert dec.plaintext == pt
    return enc


@pytest.fixture
def audited(token, spawn, tmp_path):
    """A daemon with an audit log in the test's tmp dir."""
    def _start(*extra, name="aud"):
        log = str(tmp_path / ("%s.log" % name))
        d = spawn(token, name, extra=["--audit-log", log] + list(extra))
        return d, log
    return _start


def test_records_of_a_real_run_verify(audited, client_for):
    d, log = audited()
    c = client_for(d)
    enc = round_trip(c, "uid-ok-1")
    e = rpc_error(c.decrypt, b"\x01junk", enc.key_id, enc.annotations,
                  uid="uid-bad-2")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert d.stop() == 0
    assert os.stat(log).st_mode & 0o777 == 0o600
    r = verify(log)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "v2 Encrypt OK" in r.stdout and "v2 Decrypt OK" in r.stdout
    assert "v2 Decrypt INVALID_ARGUMENT" in r.stdout
    recs = records(log)
    assert recs[0]["type"] == "open" and recs[-1]["type"] == "close"
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    ok = requests_in(log, uid="uid-ok-1")
    assert [x["op"] for x in ok] == ["Encrypt", "Decrypt"]
    for x in ok:
        assert x["code"] == "OK" and x["reason"] == "ok"
        assert x["key_id"] == enc.key_id
        assert x["mechanism"] == "aes-gcm"
        assert x["token_label"] == "kms" and x["token_serial"]
        assert x["api"] == "v2" and x["latency_us"] >= 0
    bad = requests_in(log, uid="uid-bad-2")[0]
    assert bad["code"] == "INVALID_ARGUMENT" and bad["grpc_code"] == 3
    assert bad["reason"] == "invalid-ciphertext"
    # Nothing secret: no ciphertext bytes, in any encoding.
    text = open(log).read()
    import base64
    assert base64.b64encode(enc.ciphertext).decode()[:16] not in text
    assert enc.ciphertext.hex()[:16] not in text


def test_a_long_log_keeps_the_daemon_alive(audited, client_for):
    """Past 256 KiB synced the writer drops the log's clean pages from the
    page cache (posix_fadvise): the sandboxed front must be allowed to."""
    d, log = audited("--audit-sync", "every")
    c = client_for(d)
    n = 0
    while os.stat(log).st_size < 600 * 1024:
        enc = c.encrypt(b"x" * 32, uid="uid-long-%d" % n)
        n += 1
    dec = c.decrypt(enc.ciphertext, enc.key_id, enc.annotations)
    assert dec.plaintext == b"x" * 32
    assert d.stop() == 0
    r = verify(log)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(requests_in(log, op="Encrypt")) == n


def _tamper(src, dst, fn):
    with open(src, "rb") as f:
        lines = f.read().split(b"\n")[:-1]
    out = fn(lines)
    with open(dst, "wb") as f:
        f.write(out if isinstance(out, bytes) else
                b"".join(l + b"\n" for l in out))


@pytest.mark.parametrize("how", ["edit", "delete", "swap", "truncate",
                                 "cut-lines"])
def test_verify_finds_tampering(audited, client_for, tmp_path, how):
    d, log = audited()
    c = client_for(d)
    for i in range(3):
        round_trip(c, "u%d" % i)
    assert d.stop() == 0
    assert verify(log).returncode == 0
    bad = str(tmp_path / "tampered.log")

    def edit(lines):
        lines[2] = lines[2].replace(b'"code":"OK"', b'"code":"NO"', 1)
        return lines

    fns = {
        "edit": edit,
        "delete": lambda ls: ls[:2] + ls[3:],
        "swap": lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:],
        "truncate": lambda ls: b"\n".join(ls)[:-30],
        "cut-lines": lambda ls: ls[:-2],
    }
    _tamper(log, bad, fns[how])
    r = verify(bad)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN at " + bad in r.stdout
    if how in ("edit", "delete", "swap"):
        assert bad + ":3:" in r.stdout, r.stdout
    r = verify(str(tmp_path / "does-not-exist.log"))
    assert r.returncode == 2


def test_rotation_create_mode(audited, client_for):
    d, log = audited()
    c = client_for(d)
    round_trip(c, "before-1")
    os.rename(log, log + ".1")                   # logrotate "create"
    d.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: os.path.exists(log), "the reopened audit log")
    round_trip(c, "after-usr1")
    os.rename(log, log + ".2")
    d.proc.send_signal(signal.SIGHUP)            # reload reopens too
    wait_for(lambda: os.path.exists(log), "the audit log after SIGHUP")
    round_trip(c, "after-hup")
    assert d.stop() == 0
    r = verify(log + ".1", log + ".2", log)
    assert r.returncode == 0, r.stdout
    for f in (log + ".1", log + ".2", log):
        assert verify(f).returncode == 0
    first = records(log + ".2")[0]
    assert first["type"] == "open" and first["reason"] == "reopen"
    assert first["prev_chain"] == records(log + ".1")[-1]["chain"]
    assert requests_in(log + ".1", uid="before-1")
    assert requests_in(log + ".2", uid="after-usr1")
    assert requests_in(log, uid="after-hup")
    # Out of order, or with the middle file missing: broken.
    assert verify(log + ".1", log).returncode == 1
    assert verify(log + ".2", log + ".1").returncode == 1


def test_copytruncate_is_detected(token, spawn, tmp_path, client_for):
    port = free_port()
    log = str(tmp_path / "ct.log")
    d = spawn(token, "ct", extra=["--audit-log", log, "--ops-listen",
                                  "127.0.0.1:%d" % port])
    wait_ops(d, port)
    c = client_for(d)
    round_trip(c, "before")
    wait_for(lambda: requests_in(log, uid="before", op="Decrypt"),
             "the first records")
    shutil.copy(log, log + ".1")                 # logrotate "copytruncate"
    os.truncate(log, 0)
    round_trip(c, "after")
    wait_for(lambda: requests_in(log, uid="after", op="Decrypt"),
             "records after the truncation")
    recs = records(log)
    assert recs[0]["type"] == "truncated", recs[0]
    assert recs[0]["found_bytes"] == 0 and recs[0]["expected_bytes"] > 0
    assert "shrank" in d.stderr()
    m = scrape(port)
    assert m["p11kms_audit_truncations_total"] == 1
    assert m["p11kms_audit_write_errors_total"] == 0
    r = verify(log + ".1", log, live=True)
    assert r.returncode == 0, r.stdout
    assert "(truncated)" in r.stdout


def test_v2_uid_and_status_not_audited_by_default(audited, client_for):
    d, log = audited()
    c = client_for(d)
    for _ in range(3):
        c.status()
    hostile = "evil\u202e\x1b[2J\"}\n{\"seq\":1" + "x" * 300
    c.encrypt(os.urandom(32), uid=hostile)
    assert d.stop() == 0
    recs = records(log)
    assert not [r for r in recs if r.get("op") in ("Status", "Version")]
    enc = [r for r in recs if r.get("op") == "Encrypt"]
    assert len(enc) == 1
    uid = enc[0]["uid"]
    assert enc[0]["uid_truncated"] is True
    assert uid.startswith("evil\u202e\x1b[2J\"}\n{")
    assert len(uid.encode()) <= 128
    raw = open(log, "rb").read()
    assert b"\x1b" not in raw and "\u202e".encode() not in raw
    assert b"\\u202e" in raw and b"\\u001b" in raw
    assert verify(log).returncode == 0


def test_audit_status_flag(audited, client_for):
    d, log = audited("--audit-status")
    c = client_for(d)
    c.status()
    c.raw("/v1beta1.KeyManagementService/Version", b"")
    assert d.stop() == 0
    recs = records(log)
    st = [r for r in recs if r.get("op") == "Status"]
    assert st and st[-1]["api"] == "v2" and st[-1]["code"] == "OK"
    assert "uid" not in st[-1]
    assert [r for r in recs if r.get("op") == "Version" and
            r.get("api") == "v1beta1"]


def test_peer_uid_of_each_client(token, spawn, tmp_path, pb):
    """Two clients, one as root and one as nobody (a forked child that
    drops to uid/gid 65534 before it connects): each record names its own
    peer. An abstract socket has no file permissions to get past."""
    log = str(tmp_path / "peer.log")
    name = "@p11kms-audit-" + rand_suffix()
    d = spawn(token, "peer", socket_=name, extra=["--audit-log", log])
    pb2 = pb[0]
    msg = pb2.EncryptRequest(plaintext=os.urandom(32),
                             uid="from-nobody").SerializeToString()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            h = H2(d.sockaddr())
            resp = h.call("/v2.KeyManagementService/Encrypt", msg)
            code = 0 if resp.grpc_status == 0 else 3
            h.close()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, status
    h = H2(d.sockaddr())
    m2 = pb2.EncryptRequest(plaintext=os.urandom(32),
                            uid="from-root").SerializeToString()
    assert h.call("/v2.KeyManagementService/Encrypt", m2).grpc_status == 0
    h.close()
    assert d.stop() == 0
    nobody = requests_in(log, uid="from-nobody")[0]
    root = requests_in(log, uid="from-root")[0]
    assert (nobody["peer_uid"], nobody["peer_gid"]) == (65534, 65534)
    assert nobody["peer_pid"] == pid
    assert (root["peer_uid"], root["peer_gid"]) == (0, 0)
    assert root["peer_pid"] == os.getpid()


# --------------------------------------------------------------------------
# a full disk: a small tmpfs mounted in the daemon's own mount namespace


def _can_mount_tmpfs():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        "mount -t tmpfs -o size=64k tmpfs /mnt"],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def _full_disk_daemon(token, spawn, tmp_path, mode):
    if not _can_mount_tmpfs():
        pytest.skip("needs root and unshare -m to mount a small tmpfs")
    port = free_port()
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    log = os.path.join(mnt, "audit.log")
    d = spawn(token, "full-" + mode, start=False,
              extra=["--audit-log", log, "--audit-failure", mode,
                     "--audit-queue", "20", "--ops-listen",
                     "127.0.0.1:%d" % port])
    script = "mount -t tmpfs -o size=64k tmpfs '%s' && exec %s" % (
        mnt, " ".join("'%s'" % a for a in d.args))
    d.args = ["unshare", "-m", "sh", "-c", script]
    d.start()
    wait_ops(d, port)
    root = "/proc/%d/root%s" % (d.proc.pid, mnt)
    return d, port, root


def _fill(root):
    """Fills the tmpfs; the log's own last page may still take a few
    records."""
    fd = os.open(os.path.join(root, "fill"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def _until_failing(c, port, uid):
    def failing():
        try:
            c.encrypt(os.urandom(32), uid=uid)
        except grpc.RpcError:
            pass
        return scrape(port).get("p11kms_audit_write_errors_total", 0) > 0
    wait_for(failing, "the audit log to fail on the full tmpfs", 20)


def test_full_disk_continue(token, spawn, tmp_path, client_for):
    d, port, root = _full_disk_daemon(token, spawn, tmp_path, "continue")
    c = client_for(d)
    round_trip(c, "before-full")
    _fill(root)
    _until_failing(c, port, "filling")
    # Still serving; not ready, saying why; Status stays ok.
    for i in range(60):
        round_trip(c, "while-full-%d" % i)
    assert c.status().healthz == "ok"
    # Readiness is published once a second.
    wait_for(lambda: http(port, "/readyz")[0] == 503, "readyz to fail", 5)
    st, _, body = http(port, "/healthz")
    assert "audit log cannot be written" in body, body
    m = scrape(port)
    assert m["p11kms_audit_records_lost_total"] > 0
    assert m["p11kms_audit_queue_depth"] >= 1
    assert "audit record was lost" in d.stderr()
    lost = m["p11kms_audit_records_lost_total"]
    # Room again: it writes what it kept, says how many were lost, ready.
    os.unlink(os.path.join(root, "fill"))
    wait_for(lambda: http(port, "/readyz")[0] == 200, "readyz after room")
    round_trip(c, "after-room")
    wait_for(lambda: requests_in(os.path.join(root, "audit.log"),
                                 uid="after-room", op="Decrypt"),
             "records after the disk has room")
    copy = str(tmp_path / "copy.log")
    shutil.copy(os.path.join(root, "audit.log"), copy)
    r = verify(copy, live=True)
    assert r.returncode == 0, r.stdout
    lines = [x for x in records(copy) if x.get("type") == "lost"]
    assert sum(x["count"] for x in lines) == lost
    assert "records the daemon reported lost: %d" % lost in r.stdout


def test_full_disk_fail(token, spawn, tmp_path, client_for):
    d, port, root = _full_disk_daemon(token, spawn, tmp_path, "fail")
    c = client_for(d)
    round_trip(c, "before-full")
    _fill(root)
    _until_failing(c, port, "filling")
    e = rpc_error(c.encrypt, os.urandom(32), uid="refused")
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert "audit log cannot be written" in e.details()
    assert "audit log cannot be written" in c.status().healthz
    wait_for(lambda: http(port, "/readyz")[0] == 503, "readyz to fail", 5)
    # It recovers by itself once the file can be written.
    os.unlink(os.path.join(root, "fill"))
    wait_for(lambda: c.status().healthz == "ok", "healthz after room")
    round_trip(c, "after-room")
    wait_for(lambda: requests_in(os.path.join(root, "audit.log"),
                                 uid="after-room", op="Decrypt"),
             "records after the disk has room")
    copy = str(tmp_path / "copy.log")
    shutil.copy(os.path.join(root, "audit.log"), copy)
    assert verify(copy, live=True).returncode == 0
    refused = requests_in(copy, uid="refused")
    assert refused and refused[0]["code"] == "UNAVAILABLE"
    assert refused[0]["reason"] == "audit-unavailable"
    # Every Encrypt that was answered OK has its record.
    assert scrape(port)["p11kms_audit_records_lost_total"] == 0


def test_reopen_into_a_removed_directory(token, spawn, tmp_path, client_for):
    """The log's directory is gone at rotation: the reopen fails, the
    daemon says so (not ready, a counted error) and keeps retrying; once
    the directory is back the new file continues the chain."""
    port = free_port()
    logdir = tmp_path / "logs"
    logdir.mkdir()
    log = str(logdir / "audit.log")
    d = spawn(token, "rmdir", extra=["--audit-log", log, "--ops-listen",
                                     "127.0.0.1:%d" % port])
    wait_ops(d, port)
    c = client_for(d)
    round_trip(c, "before")
    wait_for(lambda: requests_in(log, uid="before", op="Decrypt"),
             "the first records")
    last = records(log)[-1]["chain"]
    shutil.rmtree(str(logdir))
    d.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: scrape(port).get("p11kms_audit_write_errors_total",
                                      0) > 0, "the failed reopen")
    wait_for(lambda: http(port, "/readyz")[0] == 503, "readyz to fail", 5)
    assert "cannot reopen" in http(port, "/healthz")[2]
    assert "cannot reopen" in d.stderr()
    logdir.mkdir()
    wait_for(lambda: os.path.exists(log), "the reopen to be retried")
    wait_for(lambda: http(port, "/readyz")[0] == 200, "readyz again", 5)
    round_trip(c, "after")
    assert d.stop() == 0
    first = records(log)[0]
    assert first["type"] == "open" and first["reason"] == "reopen"
    assert first["prev_chain"] != last     # the close line went to the old file
    r = verify(log)
    assert r.returncode == 0, r.stdout
    assert requests_in(log, uid="after")


def test_abandoned_and_timed_out_calls_are_recorded(token, faults, spawn,
                                                    tmp_path, pb):
    """A call the client resets while the token works on it, and one
    whose deadline passes first, each still leave a record."""
    from faultctl import FAULT_SO, FaultToken
    log = str(tmp_path / "gone.log")
    d = spawn(FaultToken(token, faults), "gone", module=FAULT_SO,
              extra=["--audit-log", log, "--probe-interval", "60"])
    faults.set("C_Encrypt delay 400")
    pb2 = pb[0]
    h = H2(d.sockaddr())
    m = pb2.EncryptRequest(plaintext=os.urandom(32),
                           uid="reset-me").SerializeToString()
    from h2client import grpc_frame
    sid = h.headers("/v2.KeyManagementService/Encrypt")
    h.data(sid, grpc_frame(m), end_stream=True)
    time.sleep(0.1)
    h.reset(sid)
    m = pb2.EncryptRequest(plaintext=os.urandom(32),
                           uid="too-slow").SerializeToString()
    sid = h.headers("/v2.KeyManagementService/Encrypt",
                    extra=[("grpc-timeout", "100m")])
    h.data(sid, grpc_frame(m), end_stream=True)
    resp = h.wait(sid, timeout=5)
    assert resp.grpc_status == 4, resp
    h.close()
    faults.clear()
    wait_for(lambda: requests_in(log, uid="reset-me") and
             requests_in(log, uid="too-slow"), "both records")
    gone = requests_in(log, uid="reset-me")[0]
    assert gone["code"] == "CANCELLED" and gone["reason"] == "cancelled"
    slow = requests_in(log, uid="too-slow")[0]
    assert slow["code"] == "DEADLINE_EXCEEDED"
    assert slow["reason"] == "deadline"
    assert slow["latency_us"] >= 90000
