"""Table-driven adversarial test: one row per distinct hostile input, sent
with a real client (grpcio, hyper-h2) or raw bytes on the unix socket.

After every row: the daemon process is alive, a fresh channel does Status +
Encrypt + Decrypt within a few seconds, its RSS and peak RSS (VmHWM) stay
under its RSS at start + 64 MiB, its open fds come back near the baseline
once the hostile clients are gone, and its stderr holds no sanitizer
report. Rows that hold hostile state (stalls, idle connections,
slow clients) also check health and memory while it is held.

One daemon serves the whole module; it is restarted when a row killed it,
so a crash fails only that row. The module ends with the line
"adversarial: N distinct bad inputs tried" (terminal reporter, also
printed), and the count is in the id of test_adversarial_count.

Environment: P11KMS as for the rest of the suite. Under ASan (detected in
the daemon's maps) the quarantine is capped at 16 MiB for this module's
daemon, and since ASan's allocator keeps what it freed, the bound is the
RSS before the row + 64 MiB + 48 MiB. A row that breaks a memory or fd
bound gets the daemon restarted so the rows after it start clean.

Typical numbers here: start 11 MiB; 1000 idle connections +15 MiB; 4000
zero-window stalled calls +4 MiB; 32 MiB of unfinished requests +33 MiB.
"""

import os
import resource
import select
import socket
import struct
import sys
import threading
import time
from collections import namedtuple

import grpc
import h2.settings
import hpack
import pytest

from conftest import (Client, SharedDaemon, assert_healthy, sanitizer_report)
from h2client import H2, grpc_frame

SVC = "/v2.KeyManagementService/"
V1 = "/v1beta1.KeyManagementService/"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 5, 8

# HTTP/2 frame types and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, \
    S_MAX_FRAME, S_MAX_HEADER_LIST = range(1, 7)

MiB = 1 << 20
RSS_MARGIN = 64 * MiB          # over the daemon's RSS at start
ASAN_QUARANTINE_MB = 16        # set for the module's daemon under ASan
HEALTH_DEADLINE = 5.0          # a fresh channel's Status+Encrypt+Decrypt
FD_SLACK = 4                   # open fds over the baseline after a row
FD_SETTLE = 5.0                # seconds for closed clients' fds to go
NEED_FDS = 1400                # this process: 1000 idle connections + rest

ANN_KEY = "version.p11kms.io"   # the one annotation Encrypt returns


# --------------------------------------------------------------------------
# wire helpers


def frame(typ, flags=0, sid=0, payload=b"", length=None):
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([typ, flags]) + \
        struct.pack(">I", sid & 0x7fffffff) + payload


def settings(*pairs, ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0,
                 b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def hp_int(v, bits, first=0):
    """HPACK integer with a bits-wide prefix ORed into first."""
    m = (1 << bits) - 1
    if v < m:
        return bytes([first | v])
    out = [first | m]
    v -= m
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def hp_str(s):
    s = s.encode() if isinstance(s, str) else s
    return hp_int(len(s), 7) + s


def hp_lit(name, value, index=False):
    """Literal with a new name, with or without incremental indexing."""
    return (b"\x40" if index else b"\x00") + hp_str(name) + hp_str(value)


def hp_lit_name(idx, value):
    """Literal without indexing, name from the static table."""
    return hp_int(idx, 4) + hp_str(value)


def req_block(path, ct="application/grpc"):
    """A gRPC POST header block, static table and literals only (so it
    does not touch the dynamic table the row may be abusing)."""
    return (b"\x83\x86" + hp_lit_name(4, path) + hp_lit_name(1, "localhost")
            + hp_lit_name(31, ct) + hp_lit("te", "trailers"))


def pb_key(field, wt):
    return pb_varint(field << 3 | wt)


def pb_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7f
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_ld(field, data):
    data = data.encode() if isinstance(data, str) else data
    return pb_key(field, 2) + pb_varint(len(data)) + data


def pb_entry(key, value):
    return pb_ld(4, pb_ld(1, key) + pb_ld(2, value))


# --------------------------------------------------------------------------
# a raw connection that records what the server sends


Frame = namedtuple("Frame", "type flags sid payload")


def connect(ctx, timeout=5.0):
    """A tracked unix connection. A full listen backlog makes a connect
    with a timeout fail with EAGAIN at once: retry until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        s = ctx.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        s.settimeout(timeout)
        try:
            s.connect(ctx.daemon.sockaddr())
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise TimeoutError("listen backlog full for %.0f s" % timeout)
            time.sleep(0.005)


class Raw:
    def __init__(self, ctx, preface=PREFACE, first=None, timeout=5.0):
        self.sock = connect(ctx, timeout)
        self.buf = b""
        self.frames = []
        self.closed = False
        self.send_failed = False
        self.dec = hpack.Decoder()
        self.headers = {}        # sid -> [dict]
        self.resets = {}         # sid -> error code
        self.goaway = None       # (last_sid, code)
        self.pings = 0
        if preface is not None:
            self.send(preface + (settings() if first is None else first))

    def send(self, data, timeout=5.0):
        """False (and send_failed) when the server closed or stopped
        reading: both are acceptable answers to abuse."""
        if self.closed or self.send_failed:
            return False
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout,
                OSError):
            self.send_failed = True
            return False

    def _feed(self, chunk):
        self.buf += chunk
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            f = Frame(self.buf[3], self.buf[4],
                      int.from_bytes(self.buf[5:9], "big") & 0x7fffffff,
                      self.buf[9:9 + n])
            self.buf = self.buf[9 + n:]
            self.frames.append(f)
            if f.type == HEADERS:
                try:
                    hs = self.dec.decode(f.payload, raw=True)
                    d = {k.decode(): v.decode("utf-8", "replace")
                         for k, v in hs}
                except Exception as e:   # never the daemon's fault here
                    d = {"decode-error": repr(e)}
                self.headers.setdefault(f.sid, []).append(d)
            elif f.type == RST_STREAM and len(f.payload) == 4:
                self.resets[f.sid] = struct.unpack(">I", f.payload)[0]
            elif f.type == GOAWAY and len(f.payload) >= 8:
                self.goaway = struct.unpack(">II", f.payload[:8])
            elif f.type == PING and f.flags & ACK:
                self.pings += 1

    def pump(self, until=None, timeout=2.0):
        """Reads until until() holds, EOF, or timeout. Returns until()."""
        deadline = time.monotonic() + timeout
        while not self.closed and not (until is not None and until()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                break
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError, socket.timeout):
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._feed(chunk)
        return until() if until is not None else self.closed

    def grpc_status(self, sid):
        for d in self.headers.get(sid, []):
            if "grpc-status" in d:
                return int(d["grpc-status"])
        return None

    def http_status(self, sid):
        for d in self.headers.get(sid, []):
            if ":status" in d:
                return d[":status"]
        return None

    def stream_done(self, sid):
        return (self.grpc_status(sid) is not None or sid in self.resets or
                self.goaway is not None or self.closed)

    def outcome(self, sid):
        return "grpc-status=%s http=%s rst=%s goaway=%s closed=%s" % (
            self.grpc_status(sid), self.http_status(sid),
            self.resets.get(sid), self.goaway, self.closed)

    def expect_closed(self, what, timeout=5.0, codes=None):
        """The server must end this connection (GOAWAY, then close)."""
        self.pump(timeout=timeout)
        assert self.closed or self.send_failed, (
            "%s: connection still open after %.0f s (frames: %s)" % (
                what, timeout, [(f.type, f.sid) for f in self.frames[-8:]]))
        if codes is not None and self.goaway is not None:
            assert self.goaway[1] in codes, "%s: GOAWAY code %d not in %r" % (
                what, self.goaway[1], codes)

    def expect_stream_refused(self, sid, what, timeout=5.0):
        """The stream is refused one way or another: an error status, a
        non-200 answer, RST_STREAM, or the connection is ended."""
        self.pump(lambda: self.stream_done(sid), timeout)
        assert self.stream_done(sid) or self.send_failed, (
            "%s: no answer on stream %d within %.0f s" % (what, sid, timeout))
        st = self.grpc_status(sid)
        assert st != OK, "%s: served as OK: %s" % (what, self.outcome(sid))


# --------------------------------------------------------------------------
# daemon state and per-row context


# /proc readers from the shared library (tests/lib/p11kmstest.py).
from p11kmstest import proc_field as proc_status, open_fds  # noqa: E402


def log_size(d):
    try:
        return os.path.getsize(d.stderr_path)
    except OSError:
        return 0


def log_since(d, off):
    try:
        with open(d.stderr_path, "rb") as f:
            f.seek(off)
            return f.read(8 * MiB).decode("utf-8", "replace")
    except OSError:
        return ""


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Adv:
    """The module's daemon plus what it looked like when it started."""

    def __init__(self, shared, pb):
        self.shared = shared
        self.pb = pb
        self.daemon = None
        self.tried = []
        self.recycle = False     # restart before the next row
        self.reports = []        # sanitizer reports of recycled daemons

    def ensure(self):
        if self.recycle and self.daemon is not None:
            # a row left it over a bound: don't fail every later row too
            self.daemon.kill_quietly()
            rep = sanitizer_report(self.daemon.stderr())
            if rep:
                self.reports.append(rep)
        self.recycle = False
        d = self.shared.ensure()
        if d is not self.daemon:
            self.daemon = d
            for _ in range(3):      # warm: pool sessions, first connections
                assert_healthy(d, self.pb, "at start")
            pid = d.proc.pid
            with open("/proc/%d/maps" % pid) as f:
                self.asan = "asan" in f.read()
            self.rss0 = proc_status(pid, "VmRSS")
            self.fd0 = open_fds(pid)
            margin = RSS_MARGIN
            if self.asan:
                # freed memory waits in the quarantine; its shadow too
                margin += (ASAN_QUARANTINE_MB + 32) * MiB
            self.margin = margin
            self.rss_bound = self.rss0 + margin
        return d


class Ctx:
    """What a row gets: the daemon, stubs, socket tracking, checks."""

    def __init__(self, adv, row):
        self.adv = adv
        self.daemon = adv.daemon
        self.pb = adv.pb
        self.pb2 = adv.pb[0]
        self.row = row
        self.socks = []
        self.h2s = []
        pid = self.daemon.proc.pid
        self.rss_before = proc_status(pid, "VmRSS")
        self.hwm_before = proc_status(pid, "VmHWM")

    def track(self, s):
        self.socks.append(s)
        return s

    def raw(self, **kw):
        return Raw(self, **kw)

    def h2(self, **kw):
        c = H2(self.daemon.sockaddr(), **kw)
        self.h2s.append(c)
        return c

    def close_all(self):
        for c in self.h2s:
            try:
                c.sock.close()
            except OSError:
                pass
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.h2s, self.socks = [], []

    # -- checks a row may run while it holds hostile state
    def healthy(self, what):
        t0 = time.monotonic()
        try:
            assert_healthy(self.daemon, self.pb, "%s (%s)" % (what, self.row))
        except grpc.RpcError as e:
            raise AssertionError(
                "%s: a fresh client's Status/Encrypt/Decrypt failed after "
                "%.1f s: %s %s" % (what, time.monotonic() - t0, e.code(),
                                   e.details())) from None
        took = time.monotonic() - t0
        assert took < HEALTH_DEADLINE, (
            "%s: Status+Encrypt+Decrypt took %.1f s" % (what, took))
        return took

    def rss_bound(self):
        """start + margin; under ASan, whose allocator keeps what it
        freed (size classes, quarantine), RSS before this row + margin."""
        if self.adv.asan:
            return self.rss_before + self.adv.margin
        return self.adv.rss_bound

    def memory_ok(self, what):
        pid = self.daemon.proc.pid
        rss, hwm = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
        peak = hwm if hwm > self.hwm_before else rss   # peak in this row
        bound = self.rss_bound()
        if max(rss, peak) > bound:
            self.adv.recycle = True   # later rows get a fresh daemon
        assert max(rss, peak) <= bound, (
            "%s: RSS %.1f MiB / peak %.1f MiB over the bound %.1f MiB "
            "(daemon start %.1f MiB, before this row %.1f MiB)" % (
                what, rss / MiB, peak / MiB, bound / MiB,
                self.adv.rss0 / MiB, self.rss_before / MiB))
        return rss

    def alive(self, what):
        d = self.daemon
        assert d.alive(), "p11kms died %s (%s): status %s; stderr:\n%s" % (
            what, self.row, d.proc.returncode, d.stderr()[-3000:])

    # -- request bodies
    def encrypt_body(self, pt=None):
        return self.pb2.EncryptRequest(
            plaintext=pt or os.urandom(32)).SerializeToString()

    def sealed(self):
        c = Client(self.daemon, self.pb)
        try:
            return c.encrypt(os.urandom(32), timeout=5)
        finally:
            c.close()


# --------------------------------------------------------------------------
# the table

Row = namedtuple("Row", "name fn")
ROWS = []


def row(name):
    def deco(fn):
        assert name not in [r.name for r in ROWS], name
        ROWS.append(Row(name, fn))
        return fn
    return deco


def add_row(name, fn):
    assert name not in [r.name for r in ROWS], name
    ROWS.append(Row(name, fn))


# ---- bad prefaces ----------------------------------------------------------

def _bad_preface(data, shut=False):
    def fn(ctx):
        r = ctx.raw(preface=None)
        r.send(data)
        if shut:
            r.sock.shutdown(socket.SHUT_WR)
        r.expect_closed("bad preface %r" % data[:30])
    return fn


add_row("preface_h2c_upgrade", _bad_preface(
    b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings"
    b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"))
add_row("preface_wrong_magic_tail", _bad_preface(
    b"PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n" + settings()))
add_row("preface_lowercase", _bad_preface(
    PREFACE.lower() + settings()))
add_row("preface_tls_client_hello", _bad_preface(
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32) +
    b"\x00" * 200))
add_row("preface_nul_bytes", _bad_preface(b"\0" * 65536))
add_row("preface_half_then_eof", _bad_preface(PREFACE[:12], shut=True))
add_row("preface_http1_pipelined_posts", _bad_preface(
    b"POST /v2.KeyManagementService/Status HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\n\r\n\0\0\0\0\0" * 50))


@row("preface_then_ping_not_settings")
def _(ctx):
    # The first frame after the preface must be SETTINGS (RFC 9113 3.4).
    r = ctx.raw(first=frame(PING, 0, 0, b"\0" * 8))
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 req_block(SVC + "Status")))
    r.expect_closed("PING before SETTINGS")


# ---- oversized header blocks -----------------------------------------------

def _headers_with_continuations(ctx, block, chunk, what):
    """Sends block in HEADERS + CONTINUATION frames of chunk bytes, then a
    valid Status body; the stream must be refused."""
    r = ctx.raw()
    _status_call(r, 1, block, chunk)
    r.expect_stream_refused(1, what)
    return r


@row("header_list_20k_in_continuations")
def _(ctx):
    # 20 KiB of header list (advertised limit 16 KiB) in 4 KiB CONTINUATIONs
    # The limit is advisory (RFC 9113 6.5.2): served or refused, both fine.
    block = req_block(SVC + "Status") + b"".join(
        hp_lit("x-pad-%d" % i, "v" * 1000) for i in range(20))
    r = ctx.raw()
    parts = [block[i:i + 4096] for i in range(0, len(block), 4096)]
    data = frame(HEADERS, 0, 1, parts[0])
    for i, p in enumerate(parts[1:], 1):
        data += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0,
                      1, p)
    r.send(data + frame(DATA, END_STREAM, 1, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(1), 5)
    assert r.stream_done(1), r.outcome(1)


@row("header_field_100k_in_continuations")
def _(ctx):
    # one 100 KiB header value (> 64 KiB) spread over CONTINUATION frames
    block = req_block(SVC + "Status") + hp_lit("x-big", "b" * 100000)
    _headers_with_continuations(ctx, block, 16384, "100 KiB header field")


@row("header_list_1m_many_fields")
def _(ctx):
    # 1 MiB of distinct small literal fields (64 CONTINUATION frames)
    block = req_block(SVC + "Status") + b"".join(
        hp_lit("x-%05d" % i, "v" * 60) for i in range(15000))
    _headers_with_continuations(ctx, block, 16384, "1 MiB header list")


@row("continuation_flood_tiny_frames")
def _(ctx):
    # HEADERS then 20000 CONTINUATION frames of one small field each
    # (CVE-2024-28182 shape): refused or cut off, without burning the loop.
    r = ctx.raw()
    data = frame(HEADERS, 0, 1, req_block(SVC + "Status"))
    data += b"".join(frame(CONTINUATION, 0, 1, hp_lit("x", "y"))
                     for _ in range(20000))
    r.send(data + frame(CONTINUATION, END_HEADERS, 1, b""))
    r.expect_stream_refused(1, "CONTINUATION flood")


@row("continuation_interleaved_ping")
def _(ctx):
    # A header block must be contiguous: PING inside it is a connection error
    r = ctx.raw()
    r.send(frame(HEADERS, 0, 1, req_block(SVC + "Status")) +
           frame(PING, 0, 0, b"\0" * 8) +
           frame(CONTINUATION, END_HEADERS, 1, b""))
    r.expect_closed("PING inside a header block")


@row("continuation_without_headers")
def _(ctx):
    r = ctx.raw()
    r.send(frame(CONTINUATION, END_HEADERS, 1, req_block(SVC + "Status")))
    r.expect_closed("CONTINUATION with no HEADERS")


@row("header_block_unterminated_then_silence")
def _(ctx):
    # HEADERS without END_HEADERS, one CONTINUATION, then nothing: this
    # connection is stuck by design; nobody else may be.
    r = ctx.raw()
    r.send(frame(HEADERS, 0, 1, req_block(SVC + "Status")) +
           frame(CONTINUATION, 0, 1, hp_lit("x-a", "b")))
    ctx.healthy("while a header block is left open")


@row("trailers_oversized")
def _(ctx):
    # a request whose trailing HEADERS carry 40 KiB
    r = ctx.raw()
    body = grpc_frame(ctx.encrypt_body())
    block = b"".join(hp_lit("x-t%d" % i, "t" * 1000) for i in range(40))
    parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    data = frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt"))
    data += frame(DATA, 0, 1, body)
    data += frame(HEADERS, END_STREAM, 1, parts[0])
    for i, p in enumerate(parts[1:], 1):
        data += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0,
                      1, p)
    r.send(data)
    r.pump(lambda: r.stream_done(1), 5)
    assert r.stream_done(1) or r.send_failed, "no answer: %s" % r.outcome(1)


# ---- HPACK ---------------------------------------------------------------

def _send_block(r, sid, block, flags=0, chunk=16384):
    parts = [block[i:i + chunk] for i in range(0, len(block), chunk)] or [b""]
    data = frame(HEADERS, flags | (END_HEADERS if len(parts) == 1 else 0),
                 sid, parts[0])
    for i, p in enumerate(parts[1:], 1):
        data += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0,
                      sid, p)
    return r.send(data)


def _status_call(r, sid, block, chunk=16384):
    """HEADERS (+CONTINUATION) with block, then a valid Status body: if
    the header list is accepted, the call succeeds."""
    return _send_block(r, sid, block, chunk=chunk) and \
        r.send(frame(DATA, END_STREAM, sid, grpc_frame(b"")))


@row("hpack_bomb_dynamic_table_refs")
def _(ctx):
    # A 4000-byte field enters the dynamic table (index 62), then 64000
    # one-byte references to it: 256 MB of header list from 64 KB, against
    # an advertised SETTINGS_MAX_HEADER_LIST_SIZE of 16 KiB. It must be
    # refused, not decoded and served.
    pid = ctx.daemon.proc.pid
    r = ctx.raw()
    block = req_block(SVC + "Status") + hp_lit("x-bomb", "a" * 4000,
                                               index=True)
    block += b"\xbe" * 64000
    cpu0 = cpu_seconds(pid)
    _status_call(r, 1, block)
    r.pump(lambda: r.stream_done(1), 10)
    spent = cpu_seconds(pid) - cpu0
    assert r.stream_done(1) or r.send_failed, r.outcome(1)
    assert r.grpc_status(1) != OK, (
        "a 256 MB header list (64 KB of HPACK) was decoded and served; "
        "advertised limit 16 KiB; %.2f s of daemon CPU" % spent)


@row("hpack_bomb_across_streams")
def _(ctx):
    # The same 4000-byte entry referenced 3500 times (14 MB of header list
    # from 3.5 KB) on each of 100 streams of one connection: each list is
    # 850 times the advertised limit and must be refused.
    pid = ctx.daemon.proc.pid
    r = ctx.raw()
    cpu0 = cpu_seconds(pid)
    _status_call(r, 1, req_block(SVC + "Status") +
                 hp_lit("x-bomb", "a" * 4000, index=True) + b"\xbe" * 3500)
    for sid in range(3, 201, 2):
        if not _status_call(r, sid, req_block(SVC + "Status") +
                            b"\xbe" * 3500):
            break
    r.pump(lambda: r.stream_done(199), 10)
    spent = cpu_seconds(pid) - cpu0
    assert r.stream_done(199) or r.send_failed, r.outcome(199)
    served = [sid for sid in range(1, 201, 2) if r.grpc_status(sid) == OK]
    assert not served, (
        "%d of 100 streams with a 14 MB header list (3.5 KB of HPACK each, "
        "advertised limit 16 KiB) were served; %.2f s of daemon CPU" % (
            len(served), spent))
    ctx.memory_ok("after 100 HPACK bombs")


@row("hpack_table_size_update_over_limit")
def _(ctx):
    # dynamic table size update to 1 MiB; the server allows 4096
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 hp_int(1 << 20, 5, 0x20) + req_block(SVC + "Status")))
    r.expect_closed("table size update over SETTINGS_HEADER_TABLE_SIZE",
                    codes=(9, 1))      # COMPRESSION_ERROR (or PROTOCOL)


@row("hpack_table_size_update_mid_block")
def _(ctx):
    # a size update after the first field is a decoding error
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 b"\x83" + hp_int(0, 5, 0x20) + req_block(SVC + "Status")))
    r.expect_closed("table size update inside the block", codes=(9, 1))


@row("hpack_integer_overflow")
def _(ctx):
    # a 5-bit prefix integer that continues for 12 bytes (> 2^64)
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 b"\x3f" + b"\xff" * 12 + b"\x01" + req_block(SVC + "Status")))
    r.expect_closed("HPACK integer overflow", codes=(9, 1))


@row("hpack_index_out_of_range")
def _(ctx):
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 req_block(SVC + "Status") + hp_int(5000, 7, 0x80)))
    r.expect_closed("HPACK index 5000", codes=(9, 1))


@row("hpack_bad_huffman")
def _(ctx):
    # Huffman string of 0xff bytes: contains EOS, padding > 7 bits
    r = ctx.raw()
    bad = b"\x00" + hp_int(4, 7, 0x80) + b"\xff" * 4 + hp_str("v")
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 req_block(SVC + "Status") + bad))
    r.expect_closed("bad Huffman string", codes=(9, 1))


@row("hpack_string_longer_than_block")
def _(ctx):
    # a literal whose length says 60000 in a 40-byte block
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 req_block(SVC + "Status") + b"\x00" + hp_int(60000, 7) +
                 b"abc"))
    r.expect_closed("string past the block", codes=(9, 1))


# ---- floods --------------------------------------------------------------

@row("settings_flood_unread")
def _(ctx):
    r = ctx.raw()
    r.send(settings() * 20000, timeout=5)
    # acknowledged, or cut off as a flood; never buffered without end
    r.pump(timeout=0.3)
    ctx.memory_ok("during a SETTINGS flood")


@row("settings_too_many_entries")
def _(ctx):
    # 1000 entries in one SETTINGS frame (the daemon allows 32)
    r = ctx.raw()
    r.send(settings(*[(S_MAX_CONCURRENT, i) for i in range(1000)]))
    r.expect_closed("SETTINGS with 1000 entries")


@row("settings_ack_flood_unsolicited")
def _(ctx):
    r = ctx.raw()
    r.send(settings(ack=True) * 20000)
    r.pump(timeout=0.3)


@row("settings_bad_length")
def _(ctx):
    r = ctx.raw()
    r.send(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00\x00\x00"))
    r.expect_closed("SETTINGS of 7 bytes", codes=(6, 1))   # FRAME_SIZE


@row("settings_initial_window_over_max")
def _(ctx):
    r = ctx.raw()
    r.send(settings((S_INITIAL_WINDOW, 0x80000000)))
    r.expect_closed("INITIAL_WINDOW_SIZE 2^31", codes=(3, 1))  # FLOW_CONTROL


@row("settings_enable_push_2")
def _(ctx):
    r = ctx.raw()
    r.send(settings((S_ENABLE_PUSH, 2)))
    r.expect_closed("ENABLE_PUSH=2", codes=(1,))


@row("settings_max_frame_size_too_small")
def _(ctx):
    r = ctx.raw()
    r.send(settings((S_MAX_FRAME, 100)))
    r.expect_closed("MAX_FRAME_SIZE=100", codes=(1,))


@row("ping_flood_unread")
def _(ctx):
    # 30000 PINGs and never a read: the ACKs must not pile up unbounded
    r = ctx.raw()
    r.send(b"".join(frame(PING, 0, 0, struct.pack(">Q", i))
                    for i in range(30000)), timeout=5)
    time.sleep(0.3)
    ctx.memory_ok("during a PING flood")


@row("ping_bad_length")
def _(ctx):
    r = ctx.raw()
    r.send(frame(PING, 0, 0, b"\0" * 7))
    r.expect_closed("PING of 7 bytes", codes=(6, 1))


@row("rst_stream_rapid_reset_10k")
def _(ctx):
    # HEADERS + RST_STREAM pairs past the daemon's burst (8192)
    r = ctx.raw()
    blk = req_block(SVC + "Status")
    data = b"".join(frame(HEADERS, END_HEADERS, sid, blk) +
                    frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
                    for sid in range(1, 20001, 2))
    t0 = cpu_seconds(ctx.daemon.proc.pid)
    r.send(data, timeout=10)
    r.pump(timeout=1)
    assert cpu_seconds(ctx.daemon.proc.pid) - t0 < 5


@row("rst_stream_flood_idle_streams")
def _(ctx):
    # 50000 RST_STREAMs on streams never opened (the daemon drops those
    # before nghttp2); the connection must still serve afterwards
    r = ctx.raw()
    r.send(b"".join(frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
                    for sid in range(1, 100001, 2)), timeout=10)
    sid = 100001
    r.send(frame(HEADERS, END_HEADERS, sid, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, sid, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(sid), 5)
    assert r.grpc_status(sid) == OK or r.goaway is not None, r.outcome(sid)


@row("rst_stream_idle_oversized_payload")
def _(ctx):
    # an RST_STREAM on an idle stream that announces 4 MiB of payload: the
    # pre-filter must keep the framing right (it is a FRAME_SIZE_ERROR)
    r = ctx.raw()
    r.send(frame(RST_STREAM, 0, 7, b"\0" * (4 * MiB)), timeout=10)
    r.send(frame(HEADERS, END_HEADERS, 9, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 9, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(9), 5)
    assert r.stream_done(9) or r.send_failed, r.outcome(9)


@row("window_update_flood")
def _(ctx):
    # 100000 WINDOW_UPDATEs of 1 on the connection and on an open stream
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")))
    one = struct.pack(">I", 1)
    r.send((frame(WINDOW_UPDATE, 0, 0, one) +
            frame(WINDOW_UPDATE, 0, 1, one)) * 50000, timeout=10)
    r.send(frame(DATA, END_STREAM, 1, grpc_frame(ctx.encrypt_body())))
    r.pump(lambda: r.stream_done(1), 5)
    assert r.grpc_status(1) == OK or r.goaway is not None, r.outcome(1)


@row("window_update_zero_increment")
def _(ctx):
    r = ctx.raw()
    r.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
    r.expect_closed("WINDOW_UPDATE of 0 on stream 0", codes=(1,))


@row("window_update_stream_overflow")
def _(ctx):
    # stream window past 2^31-1: a stream error, the connection lives
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Status")) +
           frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7fffffff)))
    r.pump(lambda: r.stream_done(1), 5)
    assert 1 in r.resets or r.goaway is not None, r.outcome(1)
    r.send(frame(HEADERS, END_HEADERS, 3, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 3, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(3), 5)
    assert r.grpc_status(3) == OK or r.goaway is not None, r.outcome(3)


@row("empty_data_frame_flood")
def _(ctx):
    # 100000 zero-length DATA frames on an open stream (CVE-2019-9518)
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")))
    r.send(frame(DATA, 0, 1, b"") * 100000, timeout=10)
    r.send(frame(DATA, END_STREAM, 1, grpc_frame(ctx.encrypt_body())))
    r.pump(lambda: r.stream_done(1), 5)
    assert r.stream_done(1) or r.send_failed, r.outcome(1)


@row("priority_flood_idle_streams")
def _(ctx):
    # 30000 PRIORITY frames building a dependency tree of idle streams
    r = ctx.raw()
    data = b"".join(frame(PRIORITY, 0, sid,
                          struct.pack(">IB", max(1, sid - 2), 255))
                    for sid in range(3, 60003, 2))
    r.send(data, timeout=10)
    r.pump(timeout=0.5)
    ctx.memory_ok("after 30000 PRIORITY frames")


@row("unknown_frame_type_flood")
def _(ctx):
    # 2000 frames of unknown type 0xfa, 16 KiB each: ignored, not kept
    r = ctx.raw()
    f = frame(0xfa, 0xff, 1, b"u" * 16384)
    for _ in range(20):
        if not r.send(f * 100, timeout=10):
            break
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 1, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(1), 5)
    assert r.grpc_status(1) == OK or r.goaway is not None, r.outcome(1)


# ---- flow control ---------------------------------------------------------

@row("zero_window_stall")
def _(ctx):
    # 4 clients advertise an initial window of 0, never open it, and fill
    # 1000 streams each with Encrypt/Decrypt of the largest plaintext: no
    # response DATA can be sent. Others must still be served, and what the
    # daemon holds for the stalled ones must stay bounded. (hyper-h2 keeps
    # to the server's flow control on the request side.)
    e = ctx.sealed()
    big = grpc_frame(ctx.pb2.EncryptRequest(
        plaintext=os.urandom(512)).SerializeToString())
    dec = grpc_frame(ctx.pb2.DecryptRequest(
        ciphertext=e.ciphertext, key_id=e.key_id,
        annotations=dict(e.annotations)).SerializeToString())
    stalled = []
    for k in range(4):
        c = ctx.h2(timeout=10)
        c.conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        c.flush()
        stalled.append(c)
        path, body = (SVC + "Encrypt", big) if k % 2 == 0 else \
            (SVC + "Decrypt", dec)
        for _ in range(1000):
            sid = c.headers(path)
            assert c.data(sid, body, end_stream=True), \
                "stream %d: %r" % (sid, c.responses[sid])
        c.pump(0.1)
    for c in stalled:
        last = max(c.responses)
        deadline = time.monotonic() + 10
        while not c.responses[last].headers and not c.closed and \
                c.goaway is None and time.monotonic() < deadline:
            c.pump(0.2)
        assert c.responses[last].headers, "no response HEADERS on the " \
            "last stalled stream: %r" % c.responses[last]
        assert not any(r.data for r in c.responses.values()), \
            "server sent DATA into a zero window"
        assert c.goaway is None and not c.closed
    ctx.healthy("while 4 clients stall 1000 streams each")
    ctx.memory_ok("while 4 clients stall 1000 streams each")
    # the window opens: every stalled response must come out intact
    for c in stalled[:2]:
        c.conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        c.flush()
        deadline = time.monotonic() + 10
        while not all(r.ended for r in c.responses.values()) and \
                not c.closed and time.monotonic() < deadline:
            c.pump(0.2)
        bad = [sid for sid, r in c.responses.items()
               if r.grpc_status != OK or len(r.messages()) != 1]
        assert not bad, "stalled calls not answered OK once the window " \
            "opened: %d, e.g. %r" % (len(bad), c.responses[bad[0]])


@row("never_reading_client")
def _(ctx):
    # a client that sends 1000 requests and 5000 PINGs and never reads
    r = ctx.raw()
    blk = req_block(SVC + "Status")
    data = b"".join(frame(HEADERS, END_HEADERS, sid, blk) +
                    frame(DATA, END_STREAM, sid, grpc_frame(b"")) +
                    frame(PING, 0, 0, b"\1" * 8) * 5
                    for sid in range(1, 2001, 2))
    r.send(data, timeout=5)
    time.sleep(0.5)
    ctx.healthy("while a client never reads")
    ctx.memory_ok("while a client never reads")


@row("data_beyond_flow_control_window")
def _(ctx):
    # 100 KiB of DATA on one stream without any WINDOW_UPDATE (window 64K)
    r = ctx.raw()
    body = grpc_frame(b"\x0a\x80\x80\x04" + b"x" * 70000)
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           b"".join(frame(DATA, 0, 1, body[i:i + 16384])
                    for i in range(0, len(body), 16384)) +
           frame(DATA, END_STREAM, 1, b"x" * 16384) * 2, timeout=5)
    r.expect_closed("DATA past the flow-control window", codes=(1, 3, 5))


# ---- connections ---------------------------------------------------------

@row("idle_connections_1000")
def _(ctx):
    # 1000 connections: silent, half a preface, preface only, preface +
    # SETTINGS. A fresh connection must still be served at once.
    shapes = [b"", PREFACE[:10], PREFACE, PREFACE + settings()]
    for i in range(1000):
        s = connect(ctx)
        if shapes[i % 4]:
            s.sendall(shapes[i % 4])
    took = ctx.healthy("with 1000 idle connections open")
    assert took < 3, "fresh connection took %.1f s with 1000 idle ones" % took
    ctx.memory_ok("with 1000 idle connections open")


@row("slowloris_byte_per_50ms")
def _(ctx):
    # 10 clients each send a valid Encrypt one byte every 50 ms for ~2 s,
    # while normal calls go through; then the rest at once: the slow
    # requests must have been parsed correctly.
    body = grpc_frame(ctx.encrypt_body())
    req = (PREFACE + settings() +
           frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, END_STREAM, 1, body))
    slow = [ctx.raw(preface=None) for _ in range(10)]
    sent = [0] * len(slow)
    stop = threading.Event()

    def dribble():
        # each client starts at a different offset into its request
        for i, r in enumerate(slow):
            n = 3 * i
            r.send(req[:n])
            sent[i] = n
        while not stop.is_set():
            for i, r in enumerate(slow):
                if sent[i] < len(req) - 1:
                    r.send(req[sent[i]:sent[i] + 1])
                    sent[i] += 1
            time.sleep(0.05)
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    worst = 0.0
    c = Client(ctx.daemon, ctx.pb)
    try:
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            pt = os.urandom(32)
            enc = c.encrypt(pt, timeout=5)
            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations,
                             timeout=5).plaintext == pt
            worst = max(worst, time.monotonic() - t0)
    finally:
        c.close()
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert worst < 1.0, "a normal call took %.2f s beside slow clients" % worst
    for i, r in enumerate(slow):
        r.send(req[sent[i]:])
    for i, r in enumerate(slow):
        r.pump(lambda r=r: r.stream_done(1), 5)
        assert r.grpc_status(1) == OK, "slow client %d: %s" % (i, r.outcome(1))


@row("fd_exhaustion_accept_backlog")
def _(ctx):
    # The daemon at its RLIMIT_NOFILE (lowered to 40 over what it has):
    # extra connections wait in the backlog. It must not spin on accept()
    # (EMFILE) or flood its log, and must serve again once they go.
    pid = ctx.daemon.proc.pid
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    have = open_fds(pid) or 32
    held = []
    log0 = log_size(ctx.daemon)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (have + 40, old[1]))
        for _ in range(60):
            s = ctx.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            s.settimeout(2)
            try:
                s.connect(ctx.daemon.sockaddr())
                s.sendall(PREFACE)
            except OSError:
                pass
            held.append(s)
        time.sleep(0.2)
        cpu0 = cpu_seconds(pid)
        time.sleep(0.5)
        spent = cpu_seconds(pid) - cpu0
        logged = log_size(ctx.daemon) - log0
        assert ctx.daemon.alive()
        assert spent < 0.25 and logged < 64 * 1024, (
            "at its fd limit p11kms used %.2f s of CPU in 0.5 s (accept() "
            "busy loop?) and wrote %d bytes of log in ~0.7 s" % (
                spent, logged))
    finally:
        for s in held:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    time.sleep(0.2)


# ---- half-sent frames ------------------------------------------------------

@row("half_frame_header_then_silence")
def _(ctx):
    r = ctx.raw()
    r.send(b"\x00\x00\x08\x06\x00")         # 5 of 9 header bytes
    ctx.healthy("while a frame header is half sent")


@row("half_headers_payload_then_silence")
def _(ctx):
    r = ctx.raw()
    blk = req_block(SVC + "Status")
    r.send(frame(HEADERS, END_HEADERS, 1, blk, length=len(blk) + 500))
    ctx.healthy("while a HEADERS payload is half sent")


@row("half_data_payload_then_silence")
def _(ctx):
    r = ctx.raw()
    body = grpc_frame(ctx.encrypt_body())
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, END_STREAM, 1, body[:10], length=16000))
    ctx.healthy("while a DATA payload is half sent")


@row("half_sent_on_many_connections")
def _(ctx):
    # 200 connections each stopped inside a different frame of a request
    body = grpc_frame(ctx.encrypt_body())
    req = (PREFACE + settings() +
           frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, END_STREAM, 1, body))
    for i in range(200):
        r = ctx.raw(preface=None)
        r.send(req[:24 + (i * 7) % (len(req) - 25)])
    ctx.healthy("while 200 requests are half sent")


@row("frame_length_16m_announced")
def _(ctx):
    # a DATA frame announcing 16 MiB - 1 (over SETTINGS_MAX_FRAME_SIZE)
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, 0, 1, b"x" * 1000, length=0xffffff))
    r.expect_closed("16 MiB frame", codes=(6, 1))


# ---- gRPC length prefix ----------------------------------------------------

@row("grpc_prefix_split_and_truncated")
def _(ctx):
    # the 5-byte prefix arrives in 2+2 bytes over two DATA frames, then
    # END_STREAM: 4 bytes is no prefix
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, 0, 1, b"\x00\x00") +
           frame(DATA, END_STREAM, 1, b"\x00\x00"))
    r.pump(lambda: r.stream_done(1), 5)
    assert r.grpc_status(1) == INVALID_ARGUMENT, r.outcome(1)


@row("grpc_prefix_partial_then_cancel")
def _(ctx):
    # 2 prefix bytes, RST_STREAM(CANCEL); the connection goes on
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Decrypt")) +
           frame(DATA, 0, 1, b"\x00\x00") +
           frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) +
           frame(HEADERS, END_HEADERS, 3, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 3, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(3), 5)
    assert r.grpc_status(3) == OK, r.outcome(3)


@row("grpc_length_4g_streamed")
def _(ctx):
    # declares 0xffffffff and keeps sending: refused once past the limit,
    # long before the 200 KiB are all sent; the connection goes on
    c = ctx.h2(timeout=10)
    sid = c.headers(SVC + "Encrypt")
    body = grpc_frame(b"\x0a\x80\x80\x04", length=0xffffffff) + \
        b"z" * (200 * 1024)
    try:
        c.data(sid, body, end_stream=True)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    resp = c.wait(sid, timeout=10)
    assert resp.grpc_status == RESOURCE_EXHAUSTED or resp.reset is not None, \
        resp
    r2 = c.call(SVC + "Status")
    assert r2.grpc_status == OK, r2


@row("grpc_length_4g_many_open_streams")
def _(ctx):
    # One client opens 600 streams that each declare 4 GB, send 60 KiB and
    # never END_STREAM: 36 MB of unfinished requests against the daemon's
    # 32 MiB budget. Some are refused; memory stays bounded; and other
    # clients must still be served while this one holds its streams.
    chunk = grpc_frame(b"", length=0xffffffff) + b"q" * (60 * 1024 - 5)
    pid = ctx.daemon.proc.pid
    rss0 = proc_status(pid, "VmRSS")
    c = ctx.h2(timeout=10)
    sids = [c.headers(SVC + "Encrypt") for _ in range(600)]
    for sid in sids:
        try:
            c.data(sid, chunk, end_stream=False)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            break
    c.pump(0.2)
    refused = sum(1 for sid in sids
                  if c.responses[sid].grpc_status == RESOURCE_EXHAUSTED)
    ctx.memory_ok("with 36 MB of unfinished requests")
    grew = proc_status(pid, "VmRSS") - rss0
    allowed = 32 * MiB + (ctx.adv.margin - RSS_MARGIN) + 12 * MiB
    assert grew <= allowed, "36 MB of unfinished requests grew RSS by " \
        "%.1f MiB (budget 32 MiB)" % (grew / MiB)
    assert refused > 0, "no request refused beyond the 32 MiB budget"
    ctx.healthy("while one client holds 600 unfinished 60 KiB requests")


@row("grpc_length_zero_with_payload")
def _(ctx):
    r = ctx.h2().call(SVC + "Encrypt",
                      frame=grpc_frame(b"", length=0) + ctx.encrypt_body())
    assert r.grpc_status == INVALID_ARGUMENT, r


@row("grpc_length_prefix_over_max_exact")
def _(ctx):
    # declares max-request + 1 and sends exactly that: RESOURCE_EXHAUSTED
    msg = b"\x0a\x81\x80\x04" + b"p" * (65536 + 1 - 4)
    r = ctx.h2(timeout=10).call(SVC + "Encrypt", frame=grpc_frame(msg))
    assert r.grpc_status == RESOURCE_EXHAUSTED or r.reset is not None, r


# ---- protobuf: wrong field types -----------------------------------------

def _pb_row(path, body, expect=(INVALID_ARGUMENT,)):
    def fn(ctx):
        b = body(ctx) if callable(body) else body
        r = ctx.h2(timeout=10).call(path, frame=grpc_frame(b))
        assert r.grpc_status in expect, "%s: %r" % (path, r)
        msg = r.grpc_message or ""
        assert len(msg) <= 1024, "grpc-message of %d chars" % len(msg)
    return fn


def _sealed_annotation(ctx):
    e = ctx.sealed()
    assert list(e.annotations) == [ANN_KEY], dict(e.annotations)
    return e, e.annotations[ANN_KEY]


def _valid_decrypt_fields(ctx):
    """A correct DecryptRequest body (decrypts OK on its own)."""
    e, v = _sealed_annotation(ctx)
    return (pb_ld(1, e.ciphertext) + pb_ld(3, e.key_id) +
            pb_entry(ANN_KEY, v))


WRONG_TYPES = [
    # (name, path, body)
    ("encrypt_plaintext_as_varint", SVC + "Encrypt",
     pb_key(1, 0) + pb_varint(12345)),
    ("encrypt_plaintext_as_fixed64", SVC + "Encrypt",
     pb_key(1, 1) + b"\x01" * 8),
    ("encrypt_uid_as_fixed32", SVC + "Encrypt",
     pb_ld(1, b"pt") + pb_key(2, 5) + b"\x01" * 4),
    ("decrypt_key_id_as_varint", SVC + "Decrypt",
     lambda ctx: _valid_decrypt_fields(ctx) + pb_key(3, 0) + b"\x01"),
    ("decrypt_ciphertext_as_fixed64", SVC + "Decrypt",
     pb_key(1, 1) + b"\x02" * 8 + pb_ld(3, "k")),
    ("decrypt_annotations_as_varint", SVC + "Decrypt",
     lambda ctx: _valid_decrypt_fields(ctx) + pb_key(4, 0) + b"\x05"),
    ("decrypt_annotation_key_as_fixed32", SVC + "Decrypt",
     lambda ctx: _valid_decrypt_fields(ctx) +
     pb_ld(4, pb_key(1, 5) + b"abcd" + pb_ld(2, "v"))),
    ("decrypt_annotation_value_as_varint", SVC + "Decrypt",
     lambda ctx: _valid_decrypt_fields(ctx) +
     pb_ld(4, pb_ld(1, ANN_KEY) + pb_key(2, 0) + b"\x07")),
    ("status_group_start", SVC + "Status", pb_key(1, 3) + pb_key(1, 4)),
    ("status_wire_type_7", SVC + "Status", pb_key(1, 7) + b"\x00"),
    ("v1_version_as_varint", V1 + "Version", pb_key(1, 0) + b"\x01"),
    ("v1_encrypt_plain_as_fixed32", V1 + "Encrypt",
     pb_key(2, 5) + b"\x01\x02\x03\x04"),
    ("v1_decrypt_cipher_as_varint", V1 + "Decrypt", pb_key(2, 0) + b"\x09"),
    ("varint_11_bytes", SVC + "Encrypt",
     pb_key(2, 0) + b"\xff" * 10 + b"\x01" + pb_ld(1, b"pt")),
    ("length_past_message_end", SVC + "Encrypt",
     pb_key(1, 2) + pb_varint(1 << 40) + b"abc"),
    ("length_varint_truncated", SVC + "Encrypt", pb_key(1, 2) + b"\x80\x80"),
    ("field_number_zero", SVC + "Encrypt", pb_key(0, 2) + b"\x01a" +
     pb_ld(1, b"pt")),
]
for _n, _p, _b in WRONG_TYPES:
    add_row("pb_" + _n, _pb_row(_p, _b))


# ---- protobuf: huge and strange map entries and nesting --------------------

add_row("pb_map_key_60k", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + pb_entry("k" * 60000, b"v")))
add_row("pb_map_value_60k", _pb_row(
    SVC + "Decrypt",
    lambda ctx: pb_ld(1, ctx.sealed().ciphertext) + pb_ld(3, "x") +
    pb_entry(ANN_KEY, b"v" * 60000), expect=(INVALID_ARGUMENT, NOT_FOUND)))
add_row("pb_map_4500_entries", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + b"".join(
        pb_entry("k%d" % i, b"v") for i in range(4500))))
add_row("pb_map_empty_entries_30000", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + pb_ld(4, b"") * 30000))
add_row("pb_map_key_with_nul", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + pb_entry(ANN_KEY + "\0x", b"v")))
add_row("pb_map_over_size_cap", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + b"".join(
        pb_entry("k%d" % i, b"v" * 1000) for i in range(80)),
    expect=(RESOURCE_EXHAUSTED,)))
add_row("pb_map_valid_entry_repeated_1500", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) +
    pb_entry(ANN_KEY, _sealed_annotation(ctx)[1]) * 1500,
    expect=(OK, INVALID_ARGUMENT)))
add_row("pb_map_entry_deeply_nested_unknown", _pb_row(
    SVC + "Decrypt",
    lambda ctx: _valid_decrypt_fields(ctx) + pb_ld(
        4, pb_ld(1, ANN_KEY) + pb_ld(2, _sealed_annotation(ctx)[1]) +
        _nested(3000, 9)),
    expect=(OK, INVALID_ARGUMENT)))


def _nested(depth, field):
    """depth levels of field {field {...}} as length-delimited bytes."""
    inner = b""
    for _ in range(depth):
        inner = pb_ld(field, inner)
    return inner


add_row("pb_unknown_field_nested_5000_deep", _pb_row(
    SVC + "Encrypt", lambda ctx: ctx.encrypt_body() + _nested(5000, 15),
    expect=(OK, INVALID_ARGUMENT)))
add_row("pb_status_unknown_nested_deep", _pb_row(
    SVC + "Status", _nested(5000, 1), expect=(OK, INVALID_ARGUMENT)))
add_row("pb_groups_nested_10000_deep", _pb_row(
    SVC + "Encrypt", pb_key(7, 3) * 10000 + pb_key(7, 4) * 10000))
add_row("pb_unknown_varints_10000", _pb_row(
    SVC + "Encrypt", lambda ctx: b"".join(
        pb_key(100 + i, 0) + b"\x01" for i in range(10000)) +
    ctx.encrypt_body(), expect=(OK, INVALID_ARGUMENT)))
add_row("pb_duplicate_scalar_fields", _pb_row(
    SVC + "Decrypt",
    lambda ctx: pb_ld(3, "x" * 10) * 3000 + _valid_decrypt_fields(ctx),
    expect=(OK, INVALID_ARGUMENT)))
add_row("pb_plaintext_repeated_1000", _pb_row(
    SVC + "Encrypt", lambda ctx: pb_ld(1, os.urandom(40)) * 1000,
    expect=(OK, INVALID_ARGUMENT)))


# ---- HTTP/2 semantics ------------------------------------------------------

@row("priority_self_dependency")
def _(ctx):
    r = ctx.raw()
    r.send(frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16)))
    r.send(frame(HEADERS, END_HEADERS, 3, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 3, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(3), 5)
    assert r.stream_done(3), r.outcome(3)


@row("headers_priority_self_dependency")
def _(ctx):
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIO_FLAG, 1,
                 struct.pack(">IB", 1, 16) + req_block(SVC + "Status")))
    r.expect_stream_refused(1, "HEADERS depending on itself")


@row("data_on_stream_0")
def _(ctx):
    r = ctx.raw()
    r.send(frame(DATA, 0, 0, b"hello"))
    r.expect_closed("DATA on stream 0", codes=(1,))


@row("headers_on_even_stream")
def _(ctx):
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 2,
                 req_block(SVC + "Status")))
    r.expect_closed("HEADERS on stream 2", codes=(1,))


@row("headers_stream_id_decreasing")
def _(ctx):
    r = ctx.raw()
    blk = req_block(SVC + "Status")
    # stream 5 is closed once 7 is open: a connection error, or ignored
    # (nghttp2 is lenient with HEADERS on streams it may have closed);
    # never served
    r.send(frame(HEADERS, END_HEADERS, 7, blk) +
           frame(HEADERS, END_HEADERS, 5, blk) +
           frame(DATA, END_STREAM, 5, grpc_frame(b"")))
    r.pump(lambda: r.stream_done(5), 0.5)
    assert r.grpc_status(5) != OK, r.outcome(5)


@row("headers_on_closed_stream")
def _(ctx):
    r = ctx.raw()
    blk = req_block(SVC + "Status")
    r.send(frame(HEADERS, END_HEADERS, 1, blk) +
           frame(DATA, END_STREAM, 1, grpc_frame(b"")))
    r.pump(lambda: r.grpc_status(1) is not None, 5)
    assert r.grpc_status(1) == OK, r.outcome(1)
    r.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, blk))
    r.pump(timeout=0.3)     # STREAM_CLOSED: stream or connection error


@row("data_after_end_stream")
def _(ctx):
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Status")) +
           frame(DATA, END_STREAM, 1, grpc_frame(b"")) +
           frame(DATA, 0, 1, b"more" * 1000) * 10)
    r.pump(timeout=0.3)


@row("data_padding_over_length")
def _(ctx):
    # pad length 200 in a 10-byte padded DATA frame
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Encrypt")) +
           frame(DATA, PADDED, 1, b"\xc8" + b"\0" * 9))
    r.expect_closed("padding past the frame", codes=(1,))


@row("push_promise_from_client")
def _(ctx):
    r = ctx.raw()
    r.send(frame(HEADERS, END_HEADERS, 1, req_block(SVC + "Status")) +
           frame(PUSH_PROMISE, END_HEADERS, 1,
                 struct.pack(">I", 2) + req_block(SVC + "Status")))
    r.expect_closed("PUSH_PROMISE from a client", codes=(1,))


@row("frames_after_client_goaway")
def _(ctx):
    # the client says GOAWAY, then keeps opening streams and sending junk
    r = ctx.raw()
    r.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    blk = req_block(SVC + "Status")
    r.send(b"".join(frame(HEADERS, END_HEADERS, sid, blk) +
                    frame(DATA, END_STREAM, sid, grpc_frame(b""))
                    for sid in range(1, 201, 2)) +
           frame(PING, 0, 0, b"\0" * 8) * 100 +
           frame(GOAWAY, 0, 0, struct.pack(">II", 0, 2) + b"x" * 10000))
    r.pump(timeout=0.3)


@row("frames_after_server_goaway")
def _(ctx):
    # provoke the server's GOAWAY, then keep sending 2 MiB of requests
    r = ctx.raw()
    r.send(frame(DATA, 0, 0, b"x"))
    blk = req_block(SVC + "Status")
    more = b"".join(frame(HEADERS, END_HEADERS, sid, blk) +
                    frame(DATA, END_STREAM, sid, grpc_frame(b"y" * 1000))
                    for sid in range(1, 4001, 2))
    r.send(more, timeout=5)
    r.expect_closed("after its own GOAWAY", codes=(1,))


@row("goaway_truncated_payload")
def _(ctx):
    r = ctx.raw()
    r.send(frame(GOAWAY, 0, 0, b"\0\0\0"))
    r.expect_closed("GOAWAY of 3 bytes", codes=(6, 1))


# --------------------------------------------------------------------------
# fixtures and the test


def _show(config, line):
    """Writes line to the terminal past output capture (no -s needed)."""
    pm = config.pluginmanager
    tr, cap = pm.get_plugin("terminalreporter"), pm.get_plugin("capturemanager")
    def write():
        # after -q progress dots the line is not ended yet
        if getattr(getattr(tr, "_tw", None), "width_of_current_line", 0):
            tr.write("\n")
        tr.write_line(line)
    if tr is None:
        sys.__stderr__.write(line + "\n")
    elif cap is not None:
        with cap.global_and_fixture_disabled():
            write()
    else:
        write()


@pytest.fixture(scope="module")
def adv(tmp_path_factory, pb, request):
    # this process holds 1000+ sockets in one row; the daemon inherits the
    # raised limit too (it is started below)
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(old[1], max(old[0], NEED_FDS * 2)) \
        if old[1] != resource.RLIM_INFINITY else max(old[0], NEED_FDS * 2)
    if want != old[0]:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, old[1]))
    s = SharedDaemon(str(tmp_path_factory.mktemp("adversarial")), pb)
    tok_env = s.token.env

    def env():
        e = tok_env()
        opts = e.get("ASAN_OPTIONS", "")
        if "quarantine_size_mb" not in opts:
            e["ASAN_OPTIONS"] = (opts + ":" if opts else "") + \
                "quarantine_size_mb=%d" % ASAN_QUARANTINE_MB
        return e
    s.token.env = env
    a = Adv(s, pb)
    try:
        yield a
    finally:
        rep = s.close() or (a.reports[0] if a.reports else None)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
        line = "adversarial: %d distinct bad inputs tried" % len(a.tried)
        print(line)
        _show(request.config, line)
    if rep:
        pytest.fail("sanitizer report in the adversarial p11kms stderr:\n" +
                    rep, pytrace=False)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_adversarial(adv, row):
    d = adv.ensure()
    ctx = Ctx(adv, row.name)
    log0 = log_size(d)
    adv.tried.append(row.name)
    try:
        row.fn(ctx)
        ctx.alive("during the row")
    finally:
        ctx.close_all()
    # (1) alive, (2) fresh channel round trip in time
    ctx.healthy("after the row")
    # (3) memory bounded
    rss = ctx.memory_ok("after the row")
    # (4) fds back near the baseline once the hostile clients are gone
    if adv.fd0 is not None:
        deadline = time.monotonic() + FD_SETTLE
        while True:
            n = open_fds(d.proc.pid)
            if n <= adv.fd0 + FD_SLACK or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if n > adv.fd0 + FD_SLACK:
            adv.recycle = True
        assert n <= adv.fd0 + FD_SLACK, (
            "p11kms holds %d fds %.0f s after the row (baseline %d)" % (
                n, FD_SETTLE, adv.fd0))
    ctx.alive("after the checks")
    # shown with -s or -rP: how close each row came to the bounds
    print("%s: RSS %.1f MiB, peak %.1f MiB (start %.1f, before %.1f, bound "
          "%.1f), fds %s (baseline %s)" % (
              row.name, rss / MiB, proc_status(d.proc.pid, "VmHWM") / MiB,
              adv.rss0 / MiB, ctx.rss_before / MiB, ctx.rss_bound() / MiB,
              open_fds(d.proc.pid), adv.fd0))
    rep = sanitizer_report(log_since(d, log0))
    assert rep is None, "sanitizer report during %s:\n%s" % (row.name, rep)


@pytest.mark.parametrize("n", [len(ROWS)],
                         ids=["%d-distinct-bad-inputs" % len(ROWS)])
def test_adversarial_count(n):
    assert n >= 20, "the adversarial table shrank to %d rows" % n
    assert len({r.name for r in ROWS}) == n
    print("adversarial: %d distinct bad inputs in the table" % n)
