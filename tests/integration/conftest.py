"""Shared fixtures for the p11kms integration tests.

Every token and every daemon lives in a fresh temporary directory. Daemons are
started with subprocess.Popen and always stopped by PID (SIGTERM, bounded wait,
then SIGKILL) in fixture teardown, so a failing test never leaves one behind.

Environment:
  P11KMS   absolute path of the daemon binary (default: <repo>/build/p11kms)
  P11KMS_TEST_GCM_IV
           writeback | append | append12 | message: every daemon that would
           load SoftHSM loads the fault module in front of it instead, with
           the rule "C_EncryptInit gcm-iv MODE": a FIPS-mode HSM that refuses
           caller-chosen GCM IVs and makes them itself (tests/faultmod). The
           API, rotation and fault tests run once per form this way.
"""

import base64
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse

import pytest

import grpc

# The shared test library (tests/lib/p11kmstest.py); its names are
# re-exported here for `from conftest import ...`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))
from p11kmstest import (REPO, MODULE, MKTOKEN, generate_stubs,  # noqa: E402,F401
                        proc_field, proc_status, open_fds, free_port, http,
                        http_unix, parse_metrics)

DEFAULT_PIN = "1234"
SO_PIN = "5678"
READY_TIMEOUT = 10.0      # seconds a daemon gets to serve
STOP_TIMEOUT = 8.0        # seconds between SIGTERM and SIGKILL (> the daemon's 5 s grace)
RPC_TIMEOUT = 10.0        # default deadline of every RPC in the suite
TEST_WATCHDOG = 90        # seconds one test may take before it is aborted


GCM_IV = os.environ.get("P11KMS_TEST_GCM_IV") or None
GCM_IV_FORMS = ("writeback", "append", "append12", "message")
if GCM_IV is not None and GCM_IV not in GCM_IV_FORMS:
    raise RuntimeError("P11KMS_TEST_GCM_IV=%s: use one of %s"
                       % (GCM_IV, ", ".join(GCM_IV_FORMS)))
# The seal row each emulated form makes p11kms choose for an AES-GCM key.
GCM_IV_ROW = {"writeback": "aes-gcm/token-iv", "append": "aes-gcm/token-iv",
              "append12": "aes-gcm/token-iv", "message": "aes-gcm/message"}


# The token calls a seal and an open make, which fault rules aim at.
_MSG = GCM_IV == "message"
SEAL_CALL = "C_EncryptMessage" if _MSG else "C_Encrypt"
OPEN_CALL = "C_DecryptMessage" if _MSG else "C_Decrypt"
SEAL_INIT = "C_MessageEncryptInit" if _MSG else "C_EncryptInit"
OPEN_INIT = "C_MessageDecryptInit" if _MSG else "C_DecryptInit"


def gcm_iv_rule():
    """The fault-module line of the emulated form, or ""."""
    return "C_EncryptInit gcm-iv %s\n" % GCM_IV if GCM_IV else ""


_GCM_IV_CONTROL = []


def gcm_iv_control():
    """A control file holding only the emulation rule (made once)."""
    if not _GCM_IV_CONTROL:
        d = tempfile.mkdtemp(prefix="p11kms-gcmiv-")
        path = os.path.join(d, "fault.control")
        with open(path, "w") as f:
            f.write(gcm_iv_rule())
        _GCM_IV_CONTROL.append(path)
    return _GCM_IV_CONTROL[0]


def fault_so():
    return os.path.join(os.path.dirname(binary()), "tests",
                        "libp11kms-fault.so")

# Every daemon started by this suite, so that even an interrupted session
# kills them (pytest_sessionfinish).
_ALL_DAEMONS = []


# P11KMS_TEST_TOKEN_PROCESS=off runs the daemons of these tests with
# --token-process=off (everything in one process); default: the daemon's
# default, on (a token process per generation).
TOKEN_PROCESS = os.environ.get("P11KMS_TEST_TOKEN_PROCESS", "on") != "off"


def token_process_pid(front, timeout=10.0):
    """The pid of the token process below the daemon front (spawner's
    child); the front's own pid with --token-process=off."""
    if not TOKEN_PROCESS:
        return front

    def kids(pid):
        out = []
        for name in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % name) as f:
                    t = f.read()
            except OSError:
                continue
            rest = t[t.rindex(")") + 2:].split()
            if int(rest[1]) == pid and rest[0] != "Z":
                out.append(int(name))
        return out
    until = time.time() + timeout
    while True:
        toks = [t for s in kids(front) for t in kids(s)]
        if len(toks) == 1 or time.time() > until:
            assert len(toks) == 1, "token processes: %r" % toks
            return toks[0]
        time.sleep(0.05)


def binary():
    path = os.environ.get("P11KMS") or os.path.join(REPO, "build", "p11kms")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    return path


def rand_suffix(n=10):
    return "".join(random.choice(string.ascii_lowercase + string.digits)
                   for _ in range(n))


# --------------------------------------------------------------------------
# session-level checks and stubs


def pytest_sessionstart(session):
    b = binary()
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        raise pytest.UsageError(
            "p11kms binary not found or not executable: %s "
            "(set P11KMS to its absolute path)" % b)
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise pytest.UsageError("%s is not installed" % tool)
    if not os.path.exists(MODULE):
        raise pytest.UsageError("SoftHSM module missing: %s" % MODULE)


def pytest_sessionfinish(session, exitstatus):
    for d in list(_ALL_DAEMONS):
        d.kill_quietly()


_STUBS = None


def _generate_stubs():
    """Generates kms_v2 python stubs into a temp dir (never into the repo)."""
    global _STUBS
    if _STUBS is not None:
        return _STUBS
    out = generate_stubs(tempfile.mkdtemp(prefix="p11kms-stubs-"),
                         timeout=60)
    import kms_v2_pb2
    import kms_v2_pb2_grpc
    _STUBS = (kms_v2_pb2, kms_v2_pb2_grpc, out)
    return _STUBS


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """(kms_v2_pb2, kms_v2_pb2_grpc) generated at session start."""
    pb2, pb2_grpc, out = _generate_stubs()
    yield pb2, pb2_grpc
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(autouse=True)
def _watchdog():
    """Aborts a test that blocks longer than TEST_WATCHDOG (no pytest-timeout)."""
    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded %d s watchdog" % TEST_WATCHDOG)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_WATCHDOG)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------
# tokens


class Token:
    def __init__(self, path, token="kms", pin=DEFAULT_PIN):
        self.dir = path
        self.token = token
        self.pin = pin
        self.conf = os.path.join(path, "softhsm2.conf")
        self.pin_file = os.path.join(path, "pin")

    def env(self):
        e = dict(os.environ)
        e["SOFTHSM2_CONF"] = self.conf
        if GCM_IV:
            e["P11KMS_FAULT_CONTROL"] = gcm_iv_control()
        return e

    def uri(self, label="kek1"):
        return "pkcs11:token=%s;object=%s;type=secret-key" % (
            urllib.parse.quote(self.token, safe=""),
            urllib.parse.quote(label, safe=""))


def _run(cmd, env, what):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s %s" % (what, r.returncode,
                                                      r.stdout, r.stderr))
    return r


def _manual_token(path, label, key_id, extractable, token, add_key_only, pin):
    """The SoftHSM recipe of TOKEN-NOTES.md, for when tests/mktoken.sh is not
    there (or cannot set a custom PIN)."""
    conf = os.path.join(path, "softhsm2.conf")
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    if not add_key_only:
        os.makedirs(os.path.join(path, "tokens"), exist_ok=True)
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s\n"
                    "objectstore.backend = file\n"
                    "log.level = ERROR\n"
                    "slots.removable = false\n" % os.path.join(path, "tokens"))
        _run(["softhsm2-util", "--init-token", "--free", "--label", token,
              "--so-pin", SO_PIN, "--pin", pin], env, "softhsm2-util")
        pin_file = os.path.join(path, "pin")
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pin + "\n")
    cmd = ["pkcs11-tool", "--module", MODULE, "--token-label", token,
           "--login", "--pin", pin, "--keygen", "--key-type", "AES:32",
           "--label", label, "--id", key_id, "--sensitive", "--private"]
    if extractable:
        cmd.append("--extractable")
    _run(cmd, env, "pkcs11-tool keygen")


def _mktoken_has_pin():
    with open(MKTOKEN) as f:
        return "--pin)" in f.read()


def make_token(path, label="kek1", key_id="01", extractable=False,
               token="kms", add_key_only=False, pin=DEFAULT_PIN):
    """Creates (or adds a key to) a SoftHSM token in path with
    tests/mktoken.sh (the manual recipe only if the script is missing)."""
    os.makedirs(path, exist_ok=True)
    if os.path.exists(MKTOKEN) and (pin == DEFAULT_PIN or _mktoken_has_pin()):
        cmd = ["sh", MKTOKEN, path, "--label", label, "--id", key_id,
               "--token", token]
        if pin != DEFAULT_PIN:
            cmd += ["--pin", pin]
        if extractable:
            cmd.append("--extractable")
        if add_key_only:
            cmd.append("--add-key-only")
        _run(cmd, dict(os.environ), "mktoken.sh")
    else:
        _manual_token(path, label, key_id, extractable, token, add_key_only,
                      pin)
    t = Token(path, token=token, pin=pin)
    assert os.path.exists(t.conf), "token fixture wrote no softhsm2.conf"
    assert os.path.exists(t.pin_file), "token fixture wrote no pin file"
    return t


class ReplicaTokens:
    """SoftHSM tokens in one directory (one softhsm2.conf), each with its
    own PIN and PIN file, holding copies of one KEK (see
    make_replica_tokens)."""

    def __init__(self, path, names, pins):
        self.dir = path
        self.conf = os.path.join(path, "softhsm2.conf")
        self.names = list(names)
        self.pins = dict(zip(names, pins))
        self.pin_files = {n: os.path.join(path, "pin-%s" % n) for n in names}

    def env(self):
        e = dict(os.environ)
        e["SOFTHSM2_CONF"] = self.conf
        return e

    def uri(self, name, label="kek1"):
        return "pkcs11:token=%s;object=%s;type=secret-key" % (
            urllib.parse.quote(name, safe=""),
            urllib.parse.quote(label, safe=""))

    def module_copy(self):
        """A copy of SoftHSM's .so under a path of its own: the dynamic
        loader maps it as a separate instance (own globals), so the fault
        module can load it in front of one token while another token is
        reached through SoftHSM itself in the same process."""
        dst = os.path.join(self.dir, "softhsm-copy.so")
        if not os.path.exists(dst):
            shutil.copyfile(MODULE, dst)
        return dst


def _import_key(conf, token, pin, label, key_id, value, extractable):
    """C_CreateObject of a CKO_SECRET_KEY (AES, CKA_VALUE = value) with
    CKA_SENSITIVE and CKA_PRIVATE, CKA_EXTRACTABLE false unless asked:
    what an HSM's key import or a restored backup gives."""
    d = os.path.dirname(conf)
    kf = os.path.join(d, ".import-%s" % rand_suffix(8))
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        cmd = ["pkcs11-tool", "--module", MODULE, "--token-label", token,
               "--login", "--pin", pin, "--write-object", kf, "--type",
               "secrkey", "--key-type", "AES:%d" % len(value), "--label",
               label, "--id", key_id, "--sensitive", "--private"]
        if extractable:
            cmd.append("--extractable")
        _run(cmd, dict(os.environ, SOFTHSM2_CONF=conf), "pkcs11-tool import")
    finally:
        # The key value is test data, but wipe it like a real one.
        with open(kf, "r+b") as f:
            f.write(b"\0" * len(value))
        os.unlink(kf)


def make_replica_tokens(path, names=("kms-a", "kms-b"), pins=None,
                        label="kek1", key_id="01", same=True,
                        extractable=(), value=None):
    """Tokens `names` in path, each holding key `label` (CKA_ID key_id):
    one random AES-256 value imported into every token (same=True), or a
    value of its own per token (same=False: look-alikes that share only
    label and CKA_ID). Tokens in `extractable` get the key with
    CKA_EXTRACTABLE true. Called again on the same path with new names it
    adds tokens; with the same names and another label it adds a key."""
    names = list(names)
    pins = list(pins or ["12%02d" % (i + 34) for i in range(len(names))])
    os.makedirs(os.path.join(path, "tokens"), exist_ok=True)
    rt = ReplicaTokens(path, names, pins)
    if not os.path.exists(rt.conf):
        with open(rt.conf, "w") as f:
            f.write("directories.tokendir = %s\n"
                    "objectstore.backend = file\n"
                    "log.level = ERROR\n"
                    "slots.removable = false\n"
                    % os.path.join(path, "tokens"))
    env = rt.env()
    have = _run(["softhsm2-util", "--show-slots"], env, "softhsm2-util").stdout
    value = value or os.urandom(32)
    for n, pin in zip(names, pins):
        if not re.search(r"^\s*Label:\s+%s\s*$" % re.escape(n), have,
                         re.M):
            _run(["softhsm2-util", "--init-token", "--free", "--label", n,
                  "--so-pin", SO_PIN, "--pin", pin], env, "softhsm2-util")
            fd = os.open(rt.pin_files[n], os.O_WRONLY | os.O_CREAT |
                         os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pin + "\n")
        _import_key(rt.conf, n, pin, label, key_id,
                    value if same else os.urandom(32), n in extractable)
    return rt


# --------------------------------------------------------------------------
# daemons


class DaemonExited(Exception):
    pass


class Daemon:
    """One p11kms process. socket is a path or "@name" (abstract)."""

    def __init__(self, token, workdir, socket_=None, keys=None, extra=(),
                 pin_file=None, module=MODULE, args=None):
        self.token = token
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.socket = socket_ or os.path.join(workdir, "kms.sock")
        self.keys = keys or ["kek1"]
        self.stderr_path = os.path.join(workdir, "daemon-%s.stderr" % rand_suffix(6))
        self.stdout_path = self.stderr_path[:-7] + ".stdout"
        if module == MODULE and GCM_IV:
            module = fault_so()
        if args is None:
            args = ["-s", self.socket]
            for k in self.keys:
                args += ["-k", k if k.startswith("pkcs11:") else token.uri(k)]
            if module:
                args += ["-m", module]
            args += ["-p", pin_file or token.pin_file]
            if not TOKEN_PROCESS:
                args += ["--token-process=off"]
            args += list(extra)
        self.args = [binary()] + args
        self.proc = None
        self.starts = 0

    # -- addressing
    @property
    def abstract(self):
        return self.socket.startswith("@")

    @property
    def target(self):
        if self.abstract:
            return "unix-abstract:" + self.socket[1:]
        return "unix://" + os.path.abspath(self.socket)

    def sockaddr(self):
        return "\0" + self.socket[1:] if self.abstract else self.socket

    def channel(self):
        # A local subchannel pool: every channel is its own connection, so
        # "a fresh channel" really is a fresh connection.
        return grpc.insecure_channel(self.target, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ])

    # -- life cycle
    def spawn(self):
        """Starts the process without waiting for it to serve."""
        self.starts += 1
        self._err = open(self.stderr_path, "ab")
        self._out = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(
            self.args, env=self.token.env() if self.token else dict(os.environ),
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
            cwd=self.workdir)
        _ALL_DAEMONS.append(self)
        return self

    def start(self, pb=None, timeout=READY_TIMEOUT):
        self.spawn()
        self.wait_ready(pb, timeout)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _connectable(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(self.sockaddr())
            return True
        except OSError:
            return False
        finally:
            s.close()

    def wait_ready(self, pb=None, timeout=READY_TIMEOUT):
        """Socket exists (accepts) AND a Status call succeeds, bounded."""
        pb2, pb2_grpc = pb or _generate_stubs()[:2]
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise DaemonExited("p11kms exited early with status %s; "
                                   "stderr:\n%s" % (self.proc.returncode,
                                                    self.stderr()))
            if (self.abstract or os.path.exists(self.socket)) and \
                    self._connectable():
                break
            if time.monotonic() > deadline:
                raise TimeoutError("p11kms did not create/accept on %s within "
                                   "%.0f s; stderr:\n%s" % (self.socket, timeout,
                                                            self.stderr()))
            time.sleep(0.05)
        last = None
        with self.channel() as ch:
            stub = pb2_grpc.KeyManagementServiceStub(ch)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise DaemonExited("p11kms exited with status %s while "
                                       "starting; stderr:\n%s" %
                                       (self.proc.returncode, self.stderr()))
                try:
                    left = max(0.2, min(2.0, deadline - time.monotonic()))
                    stub.Status(pb2.StatusRequest(), timeout=left,
                                wait_for_ready=True)
                    return self
                except grpc.RpcError as e:
                    last = e
                    time.sleep(0.1)
        raise TimeoutError("p11kms socket accepts but Status failed for "
                           "%.0f s (%s); stderr:\n%s" % (timeout, last,
                                                         self.stderr()))

    def wait_exit(self, timeout=READY_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_quietly()
            raise AssertionError("p11kms did not exit within %.0f s; stderr:\n%s"
                                 % (timeout, self.stderr()))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig, waits, SIGKILLs on timeout. Returns the exit status
        (negative when killed by a signal), or None when it never ran."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
                self._close_files()
                raise AssertionError("p11kms ignored %s for %.0f s and was "
                                     "killed; stderr:\n%s" %
                                     (signal.Signals(sig).name, timeout,
                                      self.stderr()))
        self._close_files()
        return self.proc.returncode

    def kill_quietly(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
        except Exception:
            pass
        self._close_files()
        if self in _ALL_DAEMONS:
            _ALL_DAEMONS.remove(self)

    def _close_files(self):
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f is not None and not f.closed:
                f.close()

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ERROR: ThreadSanitizer")


def sanitizer_report(text):
    """The first sanitizer report in text (ASan/UBSan builds), or None."""
    for m in SANITIZER_MARKS:
        i = text.find(m)
        if i >= 0:
            return text[max(0, i - 200):i + 2500]
    return None


def run_p11kms(args, env=None, timeout=READY_TIMEOUT):
    """Runs p11kms to completion (start failures, --help). Returns
    CompletedProcess; kills it if it does not exit within timeout."""
    p = subprocess.Popen([binary()] + list(args), env=env or dict(os.environ),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=STOP_TIMEOUT)
        raise AssertionError("p11kms %s did not exit within %.0f s "
                             "(it should have failed or finished); stderr:\n%s"
                             % (" ".join(args), timeout,
                                err.decode("utf-8", "replace")))
    return subprocess.CompletedProcess(p.args, p.returncode,
                                       out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace"))


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def spawn(tmp_path, pb):
    """Factory for per-test daemons; all are stopped at teardown."""
    made = []

    def _spawn(token, name=None, start=True, **kw):
        wd = os.path.join(str(tmp_path), name or ("d%d" % len(made)))
        d = Daemon(token, wd, **kw)
        made.append(d)
        if start:
            d.start(pb)
        return d
    yield _spawn
    reports = []
    for d in made:
        d.kill_quietly()
        rep = sanitizer_report(d.stderr())
        if rep:
            reports.append(rep)
    if reports:
        pytest.fail("sanitizer report in p11kms stderr:\n" + reports[0],
                    pytrace=False)


@pytest.fixture
def token(tmp_path):
    """A fresh token with one key kek1 in this test's tmp dir."""
    return make_token(os.path.join(str(tmp_path), "tok"))


class SharedDaemon:
    """One token + daemon for a whole module. ensure() restarts it if an
    earlier test killed it, so tests do not depend on each other's order
    (the test that killed it fails on its own)."""

    def __init__(self, base, pb, extra=()):
        self.base = base
        self.pb = pb
        self.token = make_token(os.path.join(base, "tok"))
        self.extra = list(extra)
        self.daemon = None
        self.deaths = []

    def ensure(self):
        if self.daemon is not None and self.daemon.alive():
            return self.daemon
        if self.daemon is not None:
            self.deaths.append((self.daemon.proc.returncode,
                                self.daemon.stderr()[-2000:]))
            self.daemon.kill_quietly()
        self.daemon = Daemon(self.token, os.path.join(self.base, "run%d" %
                                                      (len(self.deaths))),
                             extra=self.extra)
        self.daemon.start(self.pb)
        if GCM_IV:
            # The emulation must really be in front: the key seals with
            # the token-IV row its form selects.
            want = "mechanism=%s" % GCM_IV_ROW[GCM_IV]
            assert want in self.daemon.stderr(), (
                "P11KMS_TEST_GCM_IV=%s but the daemon does not say %s:\n%s"
                % (GCM_IV, want, self.daemon.stderr()[-2000:]))
        return self.daemon

    def close(self):
        if self.daemon is not None:
            self.daemon.kill_quietly()
            return sanitizer_report(self.daemon.stderr())
        return None


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pb):
    s = SharedDaemon(str(tmp_path_factory.mktemp("shared")), pb)
    try:
        yield s
    finally:
        rep = s.close()
    if rep:   # e.g. LeakSanitizer at exit
        pytest.fail("sanitizer report in the shared p11kms stderr:\n" + rep,
                    pytrace=False)


@pytest.fixture
def kms(shared):
    """The module's shared daemon, (re)started if needed. Teardown fails
    the test (as an error) when the daemon died during it."""
    d = shared.ensure()
    before = len(d.stderr())
    yield d
    if not d.alive():
        pytest.fail("p11kms died during this test (status %s); stderr tail:\n%s"
                    % (d.proc.returncode, d.stderr()[-3000:]), pytrace=False)
    rep = sanitizer_report(d.stderr()[before:])
    if rep:
        pytest.fail("sanitizer report in p11kms stderr during this test:\n"
                    + rep, pytrace=False)


class Client:
    """A stub on its own channel; close() at teardown."""

    def __init__(self, daemon, pb):
        self.pb2, self.pb2_grpc = pb
        self.daemon = daemon
        self.channel = daemon.channel()
        self.stub = self.pb2_grpc.KeyManagementServiceStub(self.channel)

    def status(self, timeout=RPC_TIMEOUT):
        return self.stub.Status(self.pb2.StatusRequest(), timeout=timeout,
                                wait_for_ready=True)

    def encrypt(self, pt, uid="", timeout=RPC_TIMEOUT):
        return self.stub.Encrypt(self.pb2.EncryptRequest(plaintext=pt, uid=uid),
                                 timeout=timeout, wait_for_ready=True)

    def decrypt(self, ct, key_id, annotations, uid="", timeout=RPC_TIMEOUT):
        return self.stub.Decrypt(
            self.pb2.DecryptRequest(ciphertext=ct, key_id=key_id,
                                    annotations=dict(annotations), uid=uid),
            timeout=timeout, wait_for_ready=True)

    def raw(self, path, body, timeout=RPC_TIMEOUT):
        """Sends arbitrary message bytes to path; returns response bytes."""
        call = self.channel.unary_unary(path, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        return call(body, timeout=timeout, wait_for_ready=True)

    def close(self):
        self.channel.close()


@pytest.fixture
def client_for(pb):
    made = []

    def _client(daemon):
        c = Client(daemon, pb)
        made.append(c)
        return c
    yield _client
    for c in made:
        c.close()


@pytest.fixture
def client(kms, client_for):
    return client_for(kms)


def rpc_error(fn, *a, **kw):
    """Calls fn, expects grpc.RpcError, returns it."""
    try:
        r = fn(*a, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected an RPC error, got OK: %r" % (r,))


def round_trip(c, timeout=5):
    """Encrypt of 32 random bytes, Decrypt of the answer: the same bytes
    back. Returns the Encrypt answer."""
    pt = os.urandom(32)
    e = c.encrypt(pt, timeout=timeout)
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations,
                     timeout=timeout).plaintext == pt
    return e


def assert_healthy(daemon, pb, what="after abuse"):
    """The process is alive and a fresh channel can Status+Encrypt+Decrypt."""
    assert daemon.alive(), "p11kms died %s: status %s; stderr tail:\n%s" % (
        what, daemon.proc.returncode, daemon.stderr()[-3000:])
    c = Client(daemon, pb)
    try:
        st = c.status(timeout=5)
        assert st.healthz == "ok", "healthz %r %s" % (st.healthz, what)
        pt = os.urandom(32)
        enc = c.encrypt(pt, timeout=5)
        dec = c.decrypt(enc.ciphertext, enc.key_id, enc.annotations, timeout=5)
        assert dec.plaintext == pt, "round trip broken %s" % what
    finally:
        c.close()
    assert daemon.alive(), "p11kms died %s" % what


def b64variants(b):
    return {base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode(),
            base64.b64encode(b).decode().rstrip("="),
            base64.urlsafe_b64encode(b).decode().rstrip("=")}


@pytest.fixture
def faults(tmp_path, spawn):
    """The fault module's control and counts files for one test (see
    faultctl.py); skips when the module is not built. Depends on spawn so
    that this teardown (empty rules: nothing hangs) runs before spawn's,
    which stops the daemons by PID."""
    from faultctl import FAULT_SO, Faults   # it imports this module

    if not os.path.exists(FAULT_SO):
        pytest.skip("fault module %s not built (make TEST_DEPS builds it "
                    "next to p11kms)" % FAULT_SO)
    f = Faults(str(tmp_path))
    f.clear()
    yield f
    f.clear()
