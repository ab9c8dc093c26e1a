"""HTTP/2 and gRPC framing: well-formed shapes and abuse. After every abuse
case the daemon must be alive and serve Status+Encrypt+Decrypt on a fresh
channel (assert_healthy)."""

import os
import struct
import threading
import time
import urllib.parse

import h2.exceptions
import pytest

from conftest import Client, assert_healthy
from h2client import (H2, connect_unix, grpc_frame, parse_frames,
                      read_until_closed)

SVC = "/v2.KeyManagementService/"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 3, 8, 12


@pytest.fixture
def h2c(kms):
    conns = []

    def _open(**kw):
        c = H2(kms.sockaddr(), **kw)
        conns.append(c)
        return c
    yield _open
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass


def encrypt_body(pb, pt=None):
    return pb[0].EncryptRequest(plaintext=pt or os.urandom(32)).SerializeToString()


# ---------------------------------------------------------------- shapes

def test_response_shape_status(kms, pb, h2c):
    c = h2c()
    r = c.call(SVC + "Status")
    assert r.http_status == "200", r
    assert r.headers.get("content-type", "").startswith("application/grpc"), r
    assert r.trailers.get("grpc-status") == "0", r
    msgs = r.messages()
    assert len(msgs) == 1 and msgs[0][0] == 0, r
    st = pb[0].StatusResponse.FromString(msgs[0][1])
    assert st.healthz == "ok" and st.version == "v2"


def test_error_shape_percent_encoded(kms, pb, h2c):
    c = h2c()
    r = c.call(SVC + "Encrypt", b"")   # empty plaintext
    assert r.http_status == "200", r
    assert r.grpc_status == INVALID_ARGUMENT, r
    raw = r.trailers.get("grpc-message", r.headers.get("grpc-message"))
    assert raw, "no grpc-message: %r" % r
    # percent-encoding: only printable ASCII except '%' unencoded
    for ch in raw:
        assert 0x20 <= ord(ch) <= 0x7e, "unencoded byte in grpc-message %r" % raw
    assert r.data == b"", "error response carries a message body: %r" % r


def test_many_calls_one_connection_interleaved(kms, pb, h2c):
    c = h2c()
    pts = [os.urandom(32) for _ in range(20)]
    sids = []
    for p in pts:
        sid = c.headers(SVC + "Encrypt")
        sids.append(sid)
    # send bodies in reverse order, each split into 1-byte DATA frames
    for p, sid in reversed(list(zip(pts, sids))):
        c.data(sid, grpc_frame(encrypt_body(pb, p)), end_stream=True, chunk=1)
    encs = []
    for sid in sids:
        r = c.wait(sid)
        assert r.grpc_status == OK, r
        encs.append(pb[0].EncryptResponse.FromString(r.messages()[0][1]))
    cl = Client(kms, pb)
    try:
        for p, e in zip(pts, encs):
            assert cl.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == p
    finally:
        cl.close()


def test_grpc_proto_content_type_accepted(kms, pb, h2c):
    r = h2c().call(SVC + "Status", content_type="application/grpc+proto")
    assert r.http_status == "200" and r.grpc_status == OK, r


# ---------------------------------------------------------------- gRPC framing abuse

def test_compressed_flag(kms, pb, h2c):
    r = h2c().call(SVC + "Encrypt", frame=grpc_frame(encrypt_body(pb),
                                                      compressed=1))
    assert r.grpc_status == INVALID_ARGUMENT, r
    assert r.grpc_message, "empty grpc-message for compressed frame"
    assert_healthy(kms, pb)


def test_compressed_flag_with_grpc_encoding_gzip(kms, pb, h2c):
    import gzip
    body = gzip.compress(encrypt_body(pb))
    r = h2c().call(SVC + "Encrypt", frame=grpc_frame(body, compressed=1),
                   extra=[("grpc-encoding", "gzip")])
    # the daemon does not do compression: any clean refusal, never OK
    assert r.grpc_status not in (None, OK) or \
        (r.http_status not in (None, "200")), r
    assert_healthy(kms, pb)


@pytest.mark.parametrize("flag", [2, 0x80, 0xff])
def test_bad_flag_byte(kms, pb, h2c, flag):
    r = h2c().call(SVC + "Encrypt", frame=grpc_frame(encrypt_body(pb),
                                                      compressed=flag))
    assert r.grpc_status == INVALID_ARGUMENT, r
    assert_healthy(kms, pb)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json",
                                          "application/grpc-web", None])
def test_wrong_content_type(kms, pb, h2c, content_type):
    r = h2c().call(SVC + "Status", content_type=content_type)
    refused = (r.http_status is not None and r.http_status != "200") or \
        (r.grpc_status not in (None, OK)) or r.reset is not None
    assert refused, "wrong content-type %r was served: %r" % (content_type, r)
    if r.http_status not in (None, "200"):
        # 415 Unsupported Media Type is what gRPC servers answer; any 4xx
        # is a clean refusal, a 5xx is not.
        assert r.http_status.startswith("4"), r
    assert_healthy(kms, pb)


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_wrong_http_method(kms, pb, h2c, method):
    r = h2c().call(SVC + "Status", method=method)
    refused = (r.http_status not in (None, "200")) or \
        (r.grpc_status not in (None, OK)) or r.reset is not None
    assert refused, "%s was served: %r" % (method, r)
    assert_healthy(kms, pb)


def test_truncated_grpc_frame(kms, pb, h2c):
    body = grpc_frame(encrypt_body(pb))
    r = h2c().call(SVC + "Encrypt", frame=body[:-5])   # END_STREAM too early
    assert r.grpc_status not in (None, OK), r
    assert_healthy(kms, pb)


def test_short_prefix(kms, pb, h2c):
    r = h2c().call(SVC + "Encrypt", frame=b"\x00\x00\x00")
    assert r.grpc_status not in (None, OK), r
    assert_healthy(kms, pb)


def test_no_message_at_all(kms, pb, h2c):
    c = h2c()
    sid = c.headers(SVC + "Encrypt", end_stream=True)
    r = c.wait(sid)
    assert r.grpc_status not in (None, OK), r
    assert_healthy(kms, pb)


def test_two_messages_in_unary_call(kms, pb, h2c):
    body = grpc_frame(encrypt_body(pb)) * 2
    r = h2c().call(SVC + "Encrypt", frame=body)
    assert r.grpc_status not in (None, OK), r
    assert_healthy(kms, pb)


def test_huge_declared_length(kms, pb, h2c):
    r = h2c().call(SVC + "Encrypt", frame=grpc_frame(b"\x0a\x01x",
                                                      length=0xffffffff))
    assert r.grpc_status in (RESOURCE_EXHAUSTED, INVALID_ARGUMENT), r
    assert_healthy(kms, pb)


def test_oversize_body_streamed(kms, pb, h2c):
    # 1 MiB of DATA in one stream: refused early, connection stays usable.
    c = h2c(timeout=10)
    sid = c.headers(SVC + "Encrypt")
    body = grpc_frame(b"\x0a" + b"\x80\x80\x40" + os.urandom(1 << 20))
    try:
        c.data(sid, body, end_stream=True)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass   # server may stop reading; that is acceptable
    r = c.wait(sid, timeout=10)
    assert r.grpc_status == RESOURCE_EXHAUSTED or r.reset is not None, r
    assert_healthy(kms, pb)


@pytest.mark.parametrize("value", ["0n", "1n", "1u", "1m", "100u", "3S",
                                   "1H", "99999999M", "99999999H"])
def test_grpc_timeout_honoured(kms, pb, h2c, value):
    c = h2c()
    for _ in range(10):
        r = c.call(SVC + "Encrypt", encrypt_body(pb),
                   extra=[("grpc-timeout", value)])
        assert r.grpc_status in (OK, 4), r     # OK or DEADLINE_EXCEEDED
        # 99999999H is past 64 bits in ns: capped, never wrapped into a
        # deadline that has already passed.
        if value in ("3S", "1H", "99999999M", "99999999H"):
            assert r.grpc_status == OK, r
    assert_healthy(kms, pb)


@pytest.mark.parametrize("value", ["abc", "99999999999H", "-5S", "", "1x",
                                   "123456789S", "5"])
def test_grpc_timeout_malformed(kms, pb, h2c, value):
    c = h2c()
    r = c.call(SVC + "Encrypt", encrypt_body(pb), extra=[("grpc-timeout", value)])
    assert r.ended or r.reset is not None, r
    # refused (INVALID_ARGUMENT/INTERNAL) or served as if absent
    assert r.grpc_status in (OK, 3, 4, 13, None), r
    assert_healthy(kms, pb)


def test_rst_stream_on_idle_stream(kms, pb, h2c):
    # RST_STREAM on a stream never opened (grpcio 1.51 does this when a
    # deadline expires before HEADERS go out). RFC 7540 5.1 allows a
    # connection error; a lenient server may ignore it. Either way the
    # connection answers or is closed cleanly, and the daemon serves.
    c = h2c()
    c.sock.sendall(b"\x00\x00\x04\x03\x00\x00\x00\x00\x09\x00\x00\x00\x08")
    try:
        sid = 11   # past the id the raw frame named
        c.headers(SVC + "Status", sid=sid)
        c.data(sid, grpc_frame(b""), end_stream=True)
        r = c.wait(sid)
    except (BrokenPipeError, ConnectionResetError):
        r = None
    if r is not None and not (c.closed or c.goaway):
        assert r.grpc_status == OK, r
    assert_healthy(kms, pb)


def test_grpc_message_is_utf8(kms, pb, h2c):
    # grpc-message is percent-encoded UTF-8; truncating a long key_id in the
    # message must not cut a character in half.
    cl = Client(kms, pb)
    try:
        e = cl.encrypt(os.urandom(32))
    finally:
        cl.close()
    c = h2c()
    for kid in ("x" + "\u00e9" * 600, "\u00e9" * 600, "xy" + "\u20ac" * 400):
        body = pb[0].DecryptRequest(ciphertext=e.ciphertext, key_id=kid,
                                    annotations=dict(e.annotations))
        r = c.call(SVC + "Decrypt", body.SerializeToString())
        assert r.grpc_status == 5, r
        raw = r.trailers.get("grpc-message", r.headers.get("grpc-message"))
        decoded = urllib.parse.unquote_to_bytes(raw)
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError as err:
            raise AssertionError("grpc-message is not UTF-8 (%s): %r" %
                                 (err, decoded[-40:]))


def test_deadline_then_disconnect_storm(kms, pb, h2c):
    # Calls with 1 ms deadlines, then the client vanishes while they are
    # queued or on the token.
    for _ in range(10):
        c = h2c()
        for i in range(60):
            sid = c.headers(SVC + "Encrypt",
                            extra=[("grpc-timeout", "%dm" % (1 + i % 3))])
            c.conn.send_data(sid, grpc_frame(encrypt_body(pb)), end_stream=True)
        c.flush()
        time.sleep(0.002)
        c.abort()
        assert kms.alive(), "p11kms died: %s" % kms.stderr()[-2000:]
    time.sleep(0.1)
    assert_healthy(kms, pb, "after deadline+disconnect storm")


def test_deadline_storm_raw(kms, pb, h2c):
    c = h2c(timeout=10)
    for rnd in range(20):
        sids = []
        try:
            for i in range(60):
                sid = c.headers(SVC + "Encrypt", extra=[
                    ("grpc-timeout", "%du" % (100 + 300 * (i % 5)))])
                c.conn.send_data(sid, grpc_frame(encrypt_body(pb)),
                                 end_stream=True)
                sids.append(sid)
            c.flush()
            for sid in sids:
                r = c.wait(sid)
                assert r.grpc_status in (OK, 4), "round %d: %r" % (rnd, r)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise AssertionError("round %d: connection dropped (%r); p11kms "
                                 "alive: %s; stderr tail:\n%s" % (
                                     rnd, e, kms.alive(), kms.stderr()[-1500:]))
        assert kms.alive(), "p11kms died in round %d: %s" % (
            rnd, kms.stderr()[-2000:])
    assert_healthy(kms, pb, "after raw deadline storm")


def test_huge_header(kms, pb, h2c):
    c = h2c(timeout=5)
    try:
        r = c.call(SVC + "Status", extra=[("x-big", "a" * 200000)])
        assert r is not None
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    assert_healthy(kms, pb)


def test_many_headers(kms, pb, h2c):
    c = h2c(timeout=5)
    try:
        c.call(SVC + "Status", extra=[("x-h%d" % i, "v") for i in range(2000)])
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    assert_healthy(kms, pb)


# ---------------------------------------------------------------- connection abuse

def test_garbage_instead_of_preface(kms, pb):
    s = connect_unix(kms.sockaddr())
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" + os.urandom(256))
        data, closed = read_until_closed(s, timeout=5)
        assert closed, "connection with a bad preface was not closed in 5 s"
    finally:
        s.close()
    assert_healthy(kms, pb)


def test_random_bytes_after_preface(kms, pb):
    s = connect_unix(kms.sockaddr())
    try:
        s.sendall(PREFACE + os.urandom(4096))
        data, closed = read_until_closed(s, timeout=5)
        assert closed, "connection sending garbage frames was not closed in 5 s"
    finally:
        s.close()
    assert_healthy(kms, pb)


def test_idle_and_half_sent_connections_do_not_block(kms, pb):
    socks = []
    try:
        for i in range(40):
            s = connect_unix(kms.sockaddr())
            if i % 4 == 1:
                s.sendall(PREFACE[:10])                       # half preface
            elif i % 4 == 2:
                s.sendall(PREFACE + b"\x00\x00\x06\x04")       # half frame header
            elif i % 4 == 3:
                s.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                          + b"\x00\x01\x00\x01\x04\x00\x00\x00\x01\x83")
            socks.append(s)
        assert_healthy(kms, pb, "while 40 stuck connections are open")
    finally:
        for s in socks:
            s.close()
    assert_healthy(kms, pb)


def test_stream_opened_then_client_vanishes(kms, pb, h2c):
    c = h2c()
    sid = c.headers(SVC + "Encrypt")
    c.data(sid, grpc_frame(encrypt_body(pb))[:10])     # no END_STREAM
    assert_healthy(kms, pb, "while a stream hangs open")
    # the same connection still serves a second stream
    r = c.call(SVC + "Status")
    assert r.grpc_status == OK, r
    c.abort()
    time.sleep(0.1)
    assert_healthy(kms, pb)


def test_disconnect_mid_stream(kms, pb, h2c):
    for _ in range(10):
        c = h2c()
        sid = c.headers(SVC + "Decrypt")
        c.data(sid, grpc_frame(b"\x0a\x20" + os.urandom(32))[:7])
        c.abort()
    assert_healthy(kms, pb)


def test_disconnect_before_reading_responses(kms, pb, h2c):
    # Requests complete, the client is gone when the replies are written:
    # must not kill the daemon (SIGPIPE) or leak.
    for _ in range(5):
        c = h2c()
        for _ in range(50):
            sid = c.headers(SVC + "Encrypt")
            c.conn.send_data(sid, grpc_frame(encrypt_body(pb)), end_stream=True)
        c.flush()
        c.abort()
    time.sleep(0.3)
    assert_healthy(kms, pb)


def test_rst_stream_after_request(kms, pb, h2c):
    c = h2c()
    for _ in range(50):
        sid = c.headers(SVC + "Encrypt")
        c.conn.send_data(sid, grpc_frame(encrypt_body(pb)), end_stream=True)
        c.conn.reset_stream(sid, error_code=8)
    c.flush()
    time.sleep(0.3)
    # connection must survive (or be closed with GOAWAY); daemon must serve
    assert_healthy(kms, pb)


def test_rapid_reset_flood(kms, pb, h2c):
    c = h2c()
    try:
        for _ in range(1000):
            sid = c.headers(SVC + "Status")
            c.conn.reset_stream(sid, error_code=8)
        c.flush()
    except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
        pass   # closing (GOAWAY) a flooding client is fine
    time.sleep(0.2)
    assert_healthy(kms, pb, "after 1000 rapid resets")


def test_connection_churn(kms, pb):
    for _ in range(100):
        s = connect_unix(kms.sockaddr())
        s.close()
    assert_healthy(kms, pb, "after 100 connect/close")


def test_many_grpc_channels(kms, pb):
    cls = [Client(kms, pb) for _ in range(30)]
    try:
        fs = [c.stub.Status.future(pb[0].StatusRequest(), timeout=10,
                                   wait_for_ready=True) for c in cls]
        for f in fs:
            assert f.result(timeout=15).healthz == "ok"
    finally:
        for c in cls:
            c.close()
    assert_healthy(kms, pb)


def test_settings_and_ping_flood(kms, pb, h2c):
    c = h2c()
    try:
        for i in range(2000):
            c.conn.ping(struct.pack(">Q", i))
            if i % 100 == 0:
                c.flush()
                c.pump(0)
        c.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert_healthy(kms, pb, "after a PING flood")


def test_window_update_overflow(kms, pb):
    # WINDOW_UPDATE that overflows the connection window: protocol error,
    # the server closes that connection only.
    s = connect_unix(kms.sockaddr())
    try:
        wu = struct.pack(">I", 0x7fffffff)
        frame = struct.pack(">I", 4)[1:] + b"\x08\x00" + b"\x00\x00\x00\x00" + wu
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        s.sendall(PREFACE + settings + frame + frame)
        data, closed = read_until_closed(s, timeout=5)
        types = [f[0] for f in parse_frames(data)]
        assert closed or 7 in types, "no GOAWAY/close on window overflow"
    finally:
        s.close()
    assert_healthy(kms, pb)


def test_slow_client_does_not_block_others(kms, pb, h2c):
    # A client that sends a request one byte per 50 ms must not delay others.
    c = h2c(timeout=20)
    sid = c.headers(SVC + "Encrypt")
    body = grpc_frame(encrypt_body(pb))
    stop = threading.Event()

    def dribble():
        for b in body:
            if stop.is_set():
                return
            try:
                c.conn.send_data(sid, bytes([b]))
                c.flush()
            except Exception:
                return
            time.sleep(0.05)
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        cl = Client(kms, pb)
        try:
            t0 = time.monotonic()
            for _ in range(20):
                assert cl.status(timeout=5).healthz == "ok"
            assert time.monotonic() - t0 < 5
        finally:
            cl.close()
    finally:
        stop.set()
        t.join(timeout=5)
    assert_healthy(kms, pb)
