"""Several daemons, several keys, stop/start: each test owns its token and
daemons (fresh tmp dir), all stopped by PID at teardown."""

import os
import re
import signal
import socket
import time

import grpc
import pytest

from conftest import (DEFAULT_PIN, assert_healthy, b64variants, make_token,
                      rand_suffix, rpc_error)

C = grpc.StatusCode


def test_ha_two_daemons_same_token(token, spawn, client_for):
    a = spawn(token, "a")
    b = spawn(token, "b")
    ca, cb = client_for(a), client_for(b)
    ka, kb = ca.status().key_id, cb.status().key_id
    assert ka == kb, "two daemons on one token disagree on key_id"
    pa, pb_ = os.urandom(32), os.urandom(32)
    ea, eb = ca.encrypt(pa), cb.encrypt(pb_)
    assert ea.key_id == eb.key_id == ka
    assert cb.decrypt(ea.ciphertext, ea.key_id, ea.annotations).plaintext == pa
    assert ca.decrypt(eb.ciphertext, eb.key_id, eb.annotations).plaintext == pb_


def test_key_id_differs_between_tokens(tmp_path, spawn, client_for):
    t1 = make_token(str(tmp_path / "t1"))
    t2 = make_token(str(tmp_path / "t2"))
    c1, c2 = client_for(spawn(t1, "a")), client_for(spawn(t2, "b"))
    k1, k2 = c1.status().key_id, c2.status().key_id
    assert k1 != k2, "two different keys share key_id %s" % k1
    # a ciphertext of token 1 is refused by token 2's daemon, never opened
    p = os.urandom(32)
    e = c1.encrypt(p)
    err = rpc_error(c2.decrypt, e.ciphertext, e.key_id, e.annotations)
    assert err.code() == C.NOT_FOUND, "%s %r" % (err.code(), err.details())
    assert e.key_id in err.details()
    err = rpc_error(c2.decrypt, e.ciphertext, k2, e.annotations)
    assert err.code() in (C.NOT_FOUND, C.INVALID_ARGUMENT), \
        "%s %r" % (err.code(), err.details())


def test_restart_same_key_id_old_ciphertexts(token, spawn, client_for, pb):
    d = spawn(token, "r")
    c = client_for(d)
    kid = c.status().key_id
    pts = [os.urandom(32) for _ in range(5)]
    encs = [c.encrypt(p) for p in pts]
    c.close()
    assert d.stop(signal.SIGTERM) == 0, "exit status after SIGTERM; stderr:\n" + d.stderr()
    d.start(pb)
    c2 = client_for(d)
    assert c2.status().key_id == kid
    for p, e in zip(pts, encs):
        assert c2.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p


def test_sigint_exits_zero(token, spawn):
    d = spawn(token, "i")
    assert d.stop(signal.SIGINT) == 0, d.stderr()


def test_sigterm_with_calls_in_flight(token, spawn, pb):
    d = spawn(token, "f")
    ch = d.channel()
    try:
        stub = pb[1].KeyManagementServiceStub(ch)
        fs = [stub.Encrypt.future(pb[0].EncryptRequest(plaintext=os.urandom(32)),
                                  timeout=10) for _ in range(100)]
        time.sleep(0.01)
        rc = d.stop(signal.SIGTERM)
        assert rc == 0, "exit status %s; stderr:\n%s" % (rc, d.stderr())
        for f in fs:
            try:
                f.result(timeout=15)
            except grpc.RpcError as e:
                assert e.code() in (C.UNAVAILABLE, C.CANCELLED, C.INTERNAL,
                                    C.UNKNOWN), e
    finally:
        ch.close()


def test_socket_removed_on_shutdown(token, spawn):
    d = spawn(token, "u")
    assert os.path.exists(d.socket)
    assert d.stop() == 0
    assert not os.path.exists(d.socket), "socket file left after SIGTERM"


def test_socket_mode_owner_only(token, spawn):
    d = spawn(token, "m")
    mode = os.stat(d.socket).st_mode & 0o777
    assert mode & 0o077 == 0, "socket mode %o is open to group/other" % mode


def test_restart_after_sigkill_stale_socket(token, spawn, client_for, pb):
    d = spawn(token, "k")
    kid = client_for(d).status().key_id
    d.proc.kill()
    d.proc.wait(timeout=5)
    assert os.path.exists(d.socket), "precondition: SIGKILL leaves the socket"
    d.start(pb)
    assert client_for(d).status().key_id == kid


def test_second_daemon_on_live_socket_refused(token, spawn, client_for, pb,
                                               tmp_path):
    a = spawn(token, "a")
    b = spawn(token, "b", start=False, socket_=a.socket)
    b.spawn()
    rc = b.wait_exit(timeout=10)
    assert rc != 0, "second daemon took over a live socket"
    assert "p11kms: " in b.stderr()
    assert_healthy(a, pb, "after another daemon tried its socket")


def test_socket_path_is_regular_file_refused(token, spawn, tmp_path):
    path = str(tmp_path / "notasocket")
    with open(path, "w") as f:
        f.write("precious")
    d = spawn(token, "f", start=False, socket_=path)
    d.spawn()
    rc = d.wait_exit(timeout=10)
    assert rc != 0
    with open(path) as f:
        assert f.read() == "precious", "daemon clobbered a regular file"


def test_key_rotation_two_keys(tmp_path, spawn, client_for):
    tok = make_token(str(tmp_path / "t"), label="kek1", key_id="01")
    make_token(tok.dir, label="kek2", key_id="02", add_key_only=True)
    old = client_for(spawn(tok, "old", keys=["kek1"]))
    k1 = old.status().key_id
    p1 = os.urandom(32)
    e1 = old.encrypt(p1)
    # rotated: kek2 encrypts, kek1 still decrypts
    new = client_for(spawn(tok, "new", keys=["kek2", "kek1"]))
    st = new.status()
    k2 = st.key_id
    assert k2 != k1, "rotation did not change key_id"
    assert st.healthz == "ok"
    p2 = os.urandom(32)
    e2 = new.encrypt(p2)
    assert e2.key_id == k2
    assert new.decrypt(e1.ciphertext, k1, e1.annotations).plaintext == p1
    assert new.decrypt(e2.ciphertext, k2, e2.annotations).plaintext == p2
    # key_id that is configured but not the ciphertext's
    err = rpc_error(new.decrypt, e1.ciphertext, k2, e1.annotations)
    assert err.code() == C.NOT_FOUND, "%s %r" % (err.code(), err.details())
    assert k1 in err.details() or k2 in err.details(), err.details()
    err = rpc_error(new.decrypt, e2.ciphertext, k1, e2.annotations)
    assert err.code() == C.NOT_FOUND, "%s %r" % (err.code(), err.details())
    # the old daemon does not know kek2
    err = rpc_error(old.decrypt, e2.ciphertext, k2, e2.annotations)
    assert err.code() == C.NOT_FOUND, "%s %r" % (err.code(), err.details())
    assert k2 in err.details(), err.details()


def test_abstract_socket(token, spawn, client_for):
    name = "@p11kms-test-" + rand_suffix()
    d = spawn(token, "abs", socket_=name)
    c = client_for(d)
    st = c.status()
    assert st.healthz == "ok"
    p = os.urandom(32)
    e = c.encrypt(p)
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p
    assert not os.path.exists(os.path.join(d.workdir, name)), \
        "abstract name created a file"
    assert d.stop() == 0
    s = socket.socket(socket.AF_UNIX)
    try:
        with pytest.raises(OSError):
            s.connect("\0" + name[1:])
    finally:
        s.close()


def test_kms_version_v2beta1(token, spawn, client_for):
    d = spawn(token, "b1", extra=["--kms-version", "v2beta1"])
    c = client_for(d)
    st = c.status()
    assert st.version == "v2beta1"
    assert st.healthz == "ok"
    p = os.urandom(32)
    e = c.encrypt(p)
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p


def test_tuning_options_accepted(token, spawn, client_for, pb):
    d = spawn(token, "opt", extra=["--workers", "1", "--max-inflight", "4",
                                   "--probe-interval", "1", "--log-level",
                                   "debug"])
    c = client_for(d)
    fs = [c.stub.Encrypt.future(pb[0].EncryptRequest(plaintext=os.urandom(32)),
                                timeout=15, wait_for_ready=True)
          for _ in range(40)]
    ok = 0
    for f in fs:
        try:
            f.result(timeout=20)
            ok += 1
        except grpc.RpcError as e:
            # beyond max-inflight: shed load, never hang or crash
            assert e.code() in (C.RESOURCE_EXHAUSTED, C.UNAVAILABLE), e
    assert ok >= 4
    time.sleep(1.2)   # at least one health probe
    assert c.status().healthz == "ok"
    assert_healthy(d, pb)


def test_max_request_bytes_option(token, spawn, client_for, pb):
    d = spawn(token, "mrb", extra=["--max-request-bytes", "1024"])
    c = client_for(d)
    big = pb[0].DecryptRequest(ciphertext=os.urandom(2000),
                               key_id="0" * 32).SerializeToString()
    err = rpc_error(c.raw, "/v2.KeyManagementService/Decrypt", big)
    assert err.code() == C.RESOURCE_EXHAUSTED, "%s %r" % (err.code(),
                                                         err.details())
    p = os.urandom(32)
    e = c.encrypt(p)
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p


def test_logs_hold_no_secrets(tmp_path, spawn, client_for, pb):
    pin = "73918246550192"
    tok = make_token(str(tmp_path / "t"), pin=pin)
    d = spawn(tok, "log", extra=["--log-level", "debug"])
    c = client_for(d)
    pts = [os.urandom(32) for _ in range(10)]
    for p in pts:
        e = c.encrypt(p)
        assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p
        bad = bytearray(e.ciphertext)
        bad[-1] ^= 1
        rpc_error(c.decrypt, bytes(bad), e.key_id, e.annotations)
        rpc_error(c.decrypt, e.ciphertext, e.key_id, {"x.example.com": p})
    rpc_error(c.encrypt, b"")
    c.close()
    assert d.stop() == 0
    with open(d.stderr_path, "rb") as f:
        raw = f.read()
    log = raw.decode("utf-8", "replace") + d.stdout()
    assert "serving" in log
    assert pin not in log, "PIN appears in the daemon's output"
    for p in pts:
        assert p not in raw, "raw plaintext bytes in stderr"
        for form in {p.hex(), p.hex().upper()} | b64variants(p):
            assert form not in log, "plaintext %s appears in the log" % form


def test_pin_file_with_and_without_newline(tmp_path, spawn, client_for):
    tok = make_token(str(tmp_path / "t"))
    pf = str(tmp_path / "pin-nonl")
    fd = os.open(pf, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, DEFAULT_PIN.encode())
    os.close(fd)
    c = client_for(spawn(tok, "nonl", pin_file=pf))
    assert c.status().healthz == "ok"


def test_log_injection_through_uid(token, spawn, client_for):
    d = spawn(token, "inj", extra=["--log-level", "debug"])
    c = client_for(d)
    forged = 'ts=2001-01-01T00:00:00Z level=error msg="FORGED'
    for uid in ('x"\n' + forged, "y\r\n" + forged, "z\x1b[2J\x00" + forged):
        e = c.encrypt(os.urandom(32), uid=uid)
        c.decrypt(e.ciphertext, e.key_id, e.annotations, uid=uid)
    c.close()
    assert d.stop() == 0
    with open(d.stderr_path, "rb") as f:
        raw = f.read()
    assert b"\x1b" not in raw, "control characters from a request reached the log"
    for line in raw.decode("utf-8", "replace").splitlines():
        assert not line.startswith("ts=2001-01-01"), \
            "a request forged a log line: %r" % line


def test_module_by_p11kit_name(token, spawn, client_for):
    if not os.path.exists("/usr/share/p11-kit/modules/softhsm2.module"):
        pytest.skip("softhsm2 is not registered with p11-kit")
    c = client_for(spawn(token, "name", module="softhsm2"))
    p = os.urandom(32)
    e = c.encrypt(p)
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p


def test_module_path_in_uri(token, spawn, client_for):
    from conftest import MODULE
    uri = token.uri() + "?module-path=" + MODULE   # RFC 7512 query attribute
    c = client_for(spawn(token, "mp", keys=[uri], module=None))
    assert c.status().healthz == "ok"


def test_max_inflight_sheds_cleanly(token, spawn, client_for, pb):
    d = spawn(token, "shed", extra=["--workers", "1", "--max-inflight", "1"])
    c = client_for(d)
    fs = [c.stub.Encrypt.future(pb[0].EncryptRequest(plaintext=os.urandom(32)),
                                timeout=15) for _ in range(200)]
    ok = 0
    for f in fs:
        e = f.exception(timeout=20)
        if e is None:
            ok += 1
        else:
            assert e.code() == C.RESOURCE_EXHAUSTED, "%s %r" % (e.code(),
                                                              e.details())
            assert e.details()
    assert ok >= 1
    assert_healthy(d, pb, "after shedding load")


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_no_fd_or_memory_leak(token, spawn, client_for, pb):
    from h2client import H2, grpc_frame
    d = spawn(token, "leak")
    c = client_for(d)
    pb2 = pb[0]

    def batch(n):
        es = [f.result(timeout=30) for f in [
            c.stub.Encrypt.future(pb2.EncryptRequest(plaintext=os.urandom(32)),
                                  timeout=30) for _ in range(n)]]
        ds = [c.stub.Decrypt.future(pb2.DecryptRequest(
            ciphertext=e.ciphertext, key_id=e.key_id,
            annotations=dict(e.annotations)), timeout=30) for e in es]
        for f in ds:
            f.result(timeout=30)
        # and some failures, which take other code paths
        for f in [c.stub.Decrypt.future(pb2.DecryptRequest(
                ciphertext=e.ciphertext[:-1], key_id=e.key_id,
                annotations=dict(e.annotations)), timeout=30) for e in es[:50]]:
            assert f.exception(timeout=30) is not None

    batch(1000)
    fd0, rss0 = _fds(d.proc.pid), _rss_kb(d.proc.pid)
    for _ in range(8):
        batch(1000)
    for i in range(200):   # connection churn, half-sent streams
        h = H2(d.sockaddr())
        if i % 2:
            sid = h.headers("/v2.KeyManagementService/Encrypt")
            h.conn.send_data(sid, grpc_frame(b"\x0a\x20" + os.urandom(32))[:9])
            h.flush()
        h.abort()
    deadline = time.monotonic() + 3
    while _fds(d.proc.pid) > fd0 and time.monotonic() < deadline:
        time.sleep(0.05)
    fd1, rss1 = _fds(d.proc.pid), _rss_kb(d.proc.pid)
    assert fd1 <= fd0, "fd count grew from %d to %d" % (fd0, fd1)
    with open("/proc/%d/maps" % d.proc.pid) as f:
        sanitized = "libasan" in f.read()
    if not sanitized:   # ASan's quarantine makes RSS meaningless
        assert rss1 - rss0 < 4096, "RSS grew %d kB over 16000 calls" % (
            rss1 - rss0)


def test_sigterm_with_open_idle_channel_and_stuck_stream(token, spawn, client_for):
    from h2client import H2
    d = spawn(token, "stuck")
    c = client_for(d)
    assert c.status().healthz == "ok"          # channel connected and idle
    h = H2(d.sockaddr())
    h.headers("/v2.KeyManagementService/Encrypt")   # never finished
    try:
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - t0
        assert rc == 0, "exit status %s; stderr:\n%s" % (rc, d.stderr())
        assert took < 10
    finally:
        h.sock.close()


def test_half_open_streams_memory_bounded(token, spawn, pb):
    """Peers opening many streams that never finish (each with a request body
    just under --max-request-bytes) must not pin unbounded memory. Four
    connections x 1100 streams x 60 kB is ~260 MB if nothing limits it; the
    daemon must cap concurrent streams or buffered request bytes overall
    (--max-inflight 1024 x 64 KiB suggests ~64 MB), so growth must stay
    under 128 MB."""
    from h2client import H2
    d = spawn(token, "halfopen")
    rss0 = _rss_kb(d.proc.pid)
    conns, opened = [], 0
    chunk = b"\x00\x00\x00\xff\x00" + os.urandom(60000)
    try:
        for _ in range(4):
            h = H2(d.sockaddr(), timeout=10)
            conns.append(h)
            for _ in range(1100):
                if h.goaway is not None or h.closed:
                    break
                try:
                    sid = h.headers("/v2.KeyManagementService/Encrypt")
                    if not h.data(sid, chunk):     # no END_STREAM, ever
                        continue                   # refused/reset: fine
                except (BrokenPipeError, ConnectionResetError):
                    break
                except Exception as e:   # h2 refuses past the peer's limit
                    if type(e).__name__ in ("TooManyStreamsError",
                                            "ProtocolError",
                                            "StreamClosedError"):
                        break
                    raise
                opened += 1
                h.pump(0)
            h.pump(0.1)
        grew_mb = (_rss_kb(d.proc.pid) - rss0) / 1024.0
        assert d.alive(), d.stderr()[-2000:]
        assert grew_mb < 128, (
            "%d never-finished 60 kB requests on %d connections pinned %.0f "
            "MB in p11kms: buffered request bytes are not bounded overall "
            "(per-connection max_concurrent_streams=%s)" % (
                opened, len(conns), grew_mb,
                conns[0].conn.remote_settings.max_concurrent_streams))
    finally:
        for h in conns:
            h.sock.close()
    assert_healthy(d, pb, "after half-open streams")


def test_failed_request_lines_are_rate_limited(token, spawn, client_for):
    """Every failure is logged, but at most 50 lines a second: a token
    outage fails every request at once and must not flood the log."""
    d = spawn(token)
    c = client_for(d)
    for _ in range(300):
        try:
            c.encrypt(b"")              # INVALID_ARGUMENT, fails at once
        except grpc.RpcError:
            pass
    time.sleep(1.1)
    try:
        c.encrypt(b"")                  # opens the next window
    except grpc.RpcError:
        pass
    log = d.stderr()
    lines = log.count("request failed")
    dropped = [int(n) for n in
               re.findall(r"(\d+) failed requests were not logged", log)]
    assert dropped, log[-2000:]
    assert lines + sum(dropped) == 301, (lines, dropped)
    # At most 50 a second, in at most as many windows as the run took.
    assert lines <= 50 * (len(dropped) + 1), (lines, dropped)
