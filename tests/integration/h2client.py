"""A small raw HTTP/2 client (hyper-h2) over a unix socket, for framing-level
tests that grpcio cannot express. Every blocking read has a timeout."""

import select
import socket
import struct
import time
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def grpc_frame(msg, compressed=0, length=None):
    return struct.pack(">BI", compressed, len(msg) if length is None else length) + msg


def connect_unix(sockaddr, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sockaddr)
    return s


def abort(sock):
    """Closes with RST (SO_LINGER 0) where the kernel does that; on unix
    sockets it is an abrupt close with unread data discarded."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def read_until_closed(sock, timeout=5.0):
    """Reads until EOF. Returns (bytes, closed: bool)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], max(0, deadline - time.monotonic()))
        if not r:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return buf, True
        except socket.timeout:
            break
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False


def parse_frames(data):
    """Splits raw server bytes into [(type, flags, stream_id, payload)]."""
    out = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        typ, flags = data[3], data[4]
        sid = int.from_bytes(data[5:9], "big") & 0x7fffffff
        out.append((typ, flags, sid, data[9:9 + n]))
        data = data[9 + n:]
    return out


class Response:
    def __init__(self):
        self.headers = {}
        self.trailers = {}
        self.data = b""
        self.ended = False
        self.reset = None          # error code of RST_STREAM
        self.terminated = None     # ConnectionTerminated event

    @property
    def http_status(self):
        return self.headers.get(":status")

    @property
    def grpc_status(self):
        """grpc-status from trailers, or from a trailers-only response."""
        v = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if v is None else int(v)

    @property
    def grpc_message(self):
        v = self.trailers.get("grpc-message", self.headers.get("grpc-message"))
        return None if v is None else urllib.parse.unquote(v)

    def messages(self):
        """Splits data into gRPC messages [(flag, bytes)]."""
        out, d = [], self.data
        while len(d) >= 5:
            flag, n = struct.unpack(">BI", d[:5])
            out.append((flag, d[5:5 + n]))
            d = d[5 + n:]
        assert not d, "trailing partial gRPC frame in response: %r" % d
        return out

    def __repr__(self):
        return ("Response(headers=%r, trailers=%r, data=%d bytes, reset=%r, "
                "terminated=%r)" % (self.headers, self.trailers, len(self.data),
                                    self.reset, self.terminated))


def _hdict(hs):
    d = {}
    for k, v in hs:
        k = k.decode() if isinstance(k, bytes) else k
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        d[k] = v
    return d


class H2:
    def __init__(self, sockaddr, timeout=5.0, validate=True):
        self.timeout = timeout
        self.sock = connect_unix(sockaddr, timeout)
        cfg = h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()
        self.responses = {}
        self.closed = False
        self.goaway = None

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path, content_type="application/grpc", extra=(),
                method="POST", end_stream=False, sid=None):
        sid = sid or self.conn.get_next_available_stream_id()
        hs = [(":method", method), (":scheme", "http"), (":path", path),
              (":authority", "localhost")]
        if content_type is not None:
            hs.append(("content-type", content_type))
        hs.append(("te", "trailers"))
        hs += list(extra)
        self.conn.send_headers(sid, hs, end_stream=end_stream)
        self.responses[sid] = Response()
        self.flush()
        return sid

    def data(self, sid, payload, end_stream=False, chunk=None):
        """Sends payload in DATA frames of at most chunk bytes, honouring
        flow control. Stops early (returns False) when the server already
        ended or reset the stream or closed the connection."""
        chunk = chunk or 16384
        if not payload:
            self.conn.send_data(sid, b"", end_stream=end_stream)
        for i in range(0, len(payload), chunk):
            last = i + chunk >= len(payload)
            if not self._wait_window(sid, min(chunk, len(payload) - i)):
                return False
            self.conn.send_data(sid, payload[i:i + chunk],
                                end_stream=end_stream and last)
            self.flush()
        self.flush()
        return True

    def _wait_window(self, sid, n):
        deadline = time.monotonic() + self.timeout
        resp = self.responses[sid]
        while True:
            if resp.ended or resp.reset is not None or self.closed or \
                    self.goaway is not None:
                return False
            try:
                if self.conn.local_flow_control_window(sid) >= n:
                    return True
            except h2.exceptions.StreamClosedError:
                return False
            if time.monotonic() > deadline:
                raise TimeoutError("no flow-control window from server")
            self.pump(0.2)

    def reset(self, sid, code=8):
        self.conn.reset_stream(sid, error_code=code)
        self.flush()

    def call(self, path, message=b"", frame=None, content_type="application/grpc",
             extra=(), method="POST", chunk=None):
        """One unary call. frame: raw body (default grpc_frame(message))."""
        body = grpc_frame(message) if frame is None else frame
        sid = self.headers(path, content_type, extra, method)
        self.data(sid, body, end_stream=True, chunk=chunk)
        return self.wait(sid)

    def pump(self, timeout):
        """Reads what is available within timeout and feeds h2."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(chunk)
        except h2.exceptions.ProtocolError as e:
            raise AssertionError("server broke HTTP/2: %r" % e)
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            resp = self.responses.get(sid)
            if isinstance(ev, h2.events.ResponseReceived):
                resp.headers = _hdict(ev.headers)
                if ev.stream_ended:
                    resp.ended = True
            elif isinstance(ev, h2.events.TrailersReceived):
                resp.trailers = _hdict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                resp.data += ev.data
                self.conn.acknowledge_received_data(
                    ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                resp.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                if resp is not None:
                    resp.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
                for r_ in self.responses.values():
                    if r_.terminated is None:
                        r_.terminated = ev
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
        return True

    def wait(self, sid, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        resp = self.responses[sid]
        while not (resp.ended or resp.reset is not None or self.closed or
                   (self.goaway is not None and
                    sid > self.goaway.last_stream_id)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no end of stream %d within the timeout: %r"
                                   % (sid, resp))
            self.pump(min(left, 0.5))
        return resp

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()

    def abort(self):
        abort(self.sock)
