"""p11kmstest: the one Python library of the p11kms test harnesses
(tests/integration, tests/soak, tests/tokens may use it too). Nothing here
imports pytest or grpc, so a plain script can use it.

  paths       REPO, MODULE (SoftHSM), MKTOKEN
  stubs       generate_stubs(out, protos): KMS python stubs in a temp dir
  tokens      mktoken(path): a SoftHSM token made by tests/mktoken.sh
  faults      Faults: the fault module's control and counts files
  processes   proc_status(pid), proc_field(pid, field), open_fds(pid)
  ops         free_port(), http(port, path), http_unix(path, url),
              parse_metrics(text) (strict Prometheus text parser)

The integration suite's conftest.py, faultctl.py and opsclient.py re-export
these names, so `from conftest import ...`, `from faultctl import ...` and
`from opsclient import ...` keep working.
"""

import glob
import os
import re
import socket
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MKTOKEN = os.path.join(REPO, "tests", "mktoken.sh")


# --------------------------------------------------------------------------
# stubs and tokens


def generate_stubs(out, protos=("kms_v2.proto",), timeout=120):
    """Generates python stubs of proto/<protos> into out (never into the
    repository) and puts out first on sys.path."""
    os.makedirs(out, exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc",
         "-I" + os.path.join(REPO, "proto"), "--python_out=" + out,
         "--grpc_python_out=" + out] +
        [os.path.join(REPO, "proto", p) for p in protos],
        capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("protoc failed: %s" % r.stderr)
    if out not in sys.path:
        sys.path.insert(0, out)
    return out


def mktoken(path, timeout=120):
    """A SoftHSM token with key kek1 under path (tests/mktoken.sh):
    (softhsm2.conf path, PIN file path)."""
    r = subprocess.run(["sh", MKTOKEN, path], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("mktoken.sh failed: %s%s" % (r.stdout, r.stderr))
    return os.path.join(path, "softhsm2.conf"), os.path.join(path, "pin")


# --------------------------------------------------------------------------
# the fault module (tests/faultmod)


class Faults:
    """The fault module's control and counts files under base. prefix is
    put before every rule set (the integration suite's GCM IV form)."""

    def __init__(self, base, prefix=""):
        self.control = os.path.join(base, "fault.control")
        self.counts_path = os.path.join(base, "fault.counts")
        self.prefix = prefix
        self.text = None

    def set(self, text):
        """Replaces the rules atomically (new inode: the module sees it)."""
        self.text = text
        text = (self.prefix() if callable(self.prefix) else self.prefix) + text
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text.endswith("\n") or not text else text + "\n")
        os.rename(tmp, self.control)

    def clear(self):
        self.set("")

    def counts(self):
        """{PKCS#11 function: calls} ({} before any), added up over every
        process that loaded the module (each token process writes
        COUNTS.pidPID too)."""
        d = {}
        per = glob.glob(glob.escape(self.counts_path) + ".pid*")
        for path in per or [self.counts_path]:
            try:
                with open(path) as f:
                    for line in f:
                        p = line.split()
                        if len(p) == 2 and p[1].isdigit():
                            d[p[0]] = d.get(p[0], 0) + int(p[1])
            except OSError:
                pass
        return d

    def count(self, fn):
        return self.counts().get(fn, 0)


# --------------------------------------------------------------------------
# processes


def proc_field(pid, field):
    """A /proc/PID/status field in bytes (VmRSS, VmHWM...); KeyError when
    absent."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def open_fds(pid):
    """Open file descriptors of pid, or None when /proc hides them."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except (PermissionError, FileNotFoundError):
        return None


def proc_status(pid):
    """{VmRSS, VmHWM (KiB), Threads, fds} of pid, or None when it is gone."""
    d = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    d[k] = int(v.split()[0])
        d["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, ValueError, IndexError):
        return None
    return d


# --------------------------------------------------------------------------
# the ops endpoint


SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
    r'\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? '
    r'(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_http(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in
               (l.partition(":") for l in lines[1:])}
    return status, headers, body.decode("utf-8", "replace")


def _exchange(s, method, path):
    s.sendall(("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close"
               "\r\n\r\n" % (method, path)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return _split_http(data)


def http(port, path, method="GET", timeout=5.0):
    """(status, headers, body) of one HTTP/1.1 request to 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return _exchange(s, method, path)


def http_unix(sock_path, path, method="GET", timeout=5.0):
    """The same over a unix socket (an ops-listen of unix:PATH)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        return _exchange(s, method, path)


def parse_metrics(text):
    """{series: value} of a Prometheus text page; AssertionError on any
    line outside the text format 0.0.4."""
    assert text.endswith("\n")
    out = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not exposition format: %r" % line
        out[line.rsplit(" ", 1)[0]] = float(m.group(3))
    return out
