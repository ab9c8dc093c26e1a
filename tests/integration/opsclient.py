"""A client of the daemon's ops endpoint (--ops-listen): plain HTTP/1.1
over TCP, and a strict parser of the Prometheus text format."""

import re
import socket
import time

import pytest

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
    r'\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? '
    r'(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, method="GET", timeout=5.0):
    """(status, headers, body) of one HTTP/1.1 request."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close"
                   "\r\n\r\n" % (method, path)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in
               (l.partition(":") for l in lines[1:])}
    return status, headers, body.decode("utf-8")


def wait_ops(d, port, timeout=10.0):
    """Waits for the ops endpoint; skips when this build does not serve
    one (the daemon runs but never logged the endpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return http(port, "/livez")
        except OSError:
            if "ops endpoint" not in d.stderr() and time.monotonic() > \
                    deadline - timeout + 3:
                pytest.skip("p11kms accepts --ops-listen but does not serve "
                            "it yet (plugin/main.c must call ops_start)")
            time.sleep(0.1)
    raise AssertionError("ops endpoint on port %d never answered; stderr:\n%s"
                         % (port, d.stderr()))


def parse_metrics(text):
    """{series: value}; fails on any line outside the text format."""
    assert text.endswith("\n")
    out = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not exposition format: %r" % line
        out[line.rsplit(" ", 1)[0]] = float(m.group(3))
    return out


def scrape(port):
    status, headers, body = http(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)
