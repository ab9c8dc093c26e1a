"""Token faults: the real daemon over the fault-injecting PKCS#11 module
(tests/faultmod, built as <dir of $P11KMS>/tests/libp11kms-fault.so) in front
of SoftHSM. Each test owns its token, control file, counts file and daemon
(fresh tmp dir); daemons are stopped by PID at teardown, after the control
file is emptied so that no token call is left hanging.

What the daemon must do (the reliability issue):
  - an operation failure (bad tag) fails only that request;
  - a session fault reopens the session; a module fault finalizes and
    re-initializes the module with capped exponential backoff;
  - a PIN fault stops every login until SIGHUP (never lock the token);
  - while the token is down requests get UNAVAILABLE at once and Status says
    what is wrong; once it is back Status is "ok" within a probe interval;
  - a hung token call costs its request DEADLINE_EXCEEDED at the deadline,
    Status stays prompt, other work goes on, stuck workers are bounded;
  - a wrong PIN at start: exit status 2 after exactly one C_Login.
"""

import os
import signal
import time

import grpc
import pytest

from conftest import (OPEN_CALL as OPEN, OPEN_INIT, SEAL_CALL as SEAL,
                      SEAL_INIT, round_trip, rpc_error, run_p11kms)
from faultctl import FAULT_SO, FaultToken
from h2client import H2

C = grpc.StatusCode

PROBE = 1                 # --probe-interval of every daemon here (seconds)
FAST = 1.0                # "at once": a refused request or a Status, seconds
BACK = PROBE + 2.0        # token back -> Status "ok" again, seconds
SVC = "/v2.KeyManagementService/"


@pytest.fixture
def fdaemon(token, faults, spawn, client_for):
    """Factory: a daemon on the fault module, started, and a Client. At
    teardown each daemon's stderr tail is printed (pytest shows it for a
    failed test) along with the module's call counts."""
    made = []

    def _start(name="d", workers=2, probe=PROBE, extra=()):
        ft = FaultToken(token, faults)
        d = spawn(ft, name, module=FAULT_SO,
                  extra=["--probe-interval", str(probe), "--workers",
                         str(workers)] + list(extra))
        made.append(d)
        return d, client_for(d)
    yield _start
    for d in made:
        print("---- %s stderr (tail) ----\n%s" % (d.workdir,
                                                   d.stderr()[-3000:]))
    print("---- calls ----\n%s" % " ".join(
        "%s=%d" % kv for kv in sorted(faults.counts().items()) if kv[1]))


# --------------------------------------------------------------------------
# helpers


def timed(fn, *a, **kw):
    """(result or grpc.RpcError, seconds)."""
    t0 = time.monotonic()
    try:
        r = fn(*a, **kw)
    except grpc.RpcError as e:
        r = e
    return r, time.monotonic() - t0


def words(s):
    return s.lower().replace("_", " ")


def threads_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def rpc_desc(r):
    if isinstance(r, grpc.RpcError):
        return "%s %r" % (r.code(), r.details())
    return "OK"


class Checks:
    """Collects failed expectations, so that one run against a daemon tells
    the whole story; done() fails the test listing all of them. Every wait
    is bounded."""

    def __init__(self):
        self.bad = []
        self.slow_status = 0.0

    def check(self, ok, msg):
        if not ok:
            self.bad.append(msg)
        return ok

    def status(self, c, budget=FAST):
        """healthz, or None when Status failed; a Status slower than budget
        is recorded (it must answer promptly whatever the token does)."""
        r, dt = timed(c.status, timeout=budget + 1.0)
        if dt > budget:
            self.slow_status = max(self.slow_status, dt)
        if isinstance(r, grpc.RpcError):
            self.bad.append("Status failed after %.2f s: %s" % (dt,
                                                               rpc_desc(r)))
            return None
        return r.healthz

    def poll_status(self, c, cond, timeout, what):
        """Polls Status until cond(healthz); records what on timeout.
        Returns the last healthz."""
        deadline = time.monotonic() + timeout
        h = None
        while time.monotonic() < deadline:
            h = self.status(c)
            if h is not None and cond(h):
                return h
            time.sleep(0.05)
        self.bad.append("%s (waited %.1f s; last healthz %r)" % (what,
                                                                timeout, h))
        return h

    def unavailable_fast(self, c, what):
        r, dt = timed(c.encrypt, os.urandom(32), timeout=10)
        if not isinstance(r, grpc.RpcError) or r.code() != C.UNAVAILABLE:
            self.bad.append("%s: Encrypt gave %s, want UNAVAILABLE" %
                            (what, rpc_desc(r)))
        elif dt > FAST:
            self.bad.append("%s: UNAVAILABLE only after %.2f s (want it at "
                            "once, not a wait)" % (what, dt))

    def serves(self, c, timeout, what):
        """Round trips succeed within timeout (polled)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                round_trip(c, timeout=2)
                return True
            except grpc.RpcError as e:
                last = e
                time.sleep(0.1)
        self.bad.append("%s: no successful round trip within %.1f s "
                        "(last: %s)" % (what, timeout, rpc_desc(last)))
        return False

    def done(self):
        if self.slow_status:
            self.bad.append("Status took up to %.2f s (must answer within "
                            "%.1f s)" % (self.slow_status, FAST))
        assert not self.bad, "%d expectation(s) failed:\n  - %s" % (
            len(self.bad), "\n  - ".join(self.bad))


# --------------------------------------------------------------------------
# baseline


def test_forwards_without_faults(fdaemon, faults):
    d, c = fdaemon()
    assert c.status(timeout=5).healthz == "ok"
    round_trip(c)
    n = faults.counts()
    assert n.get("C_Initialize") == 1, n
    assert n.get("C_Login") == 1, n
    assert n.get(SEAL, 0) >= 2, n   # self-test, probe, request


# --------------------------------------------------------------------------
# classification


def test_operation_failure_costs_only_that_request(fdaemon, faults):
    # A long probe interval: the counted rule below is for the request.
    d, c = fdaemon(probe=30)
    e = round_trip(c)
    before = faults.counts()
    chk = Checks()

    # A real bad tag, then a C_Decrypt failing the way SoftHSM reports one.
    bad = bytearray(e.ciphertext)
    bad[-1] ^= 1
    err = rpc_error(c.decrypt, bytes(bad), e.key_id, e.annotations)
    chk.check(err.code() != C.UNAVAILABLE,
              "bad tag answered UNAVAILABLE (it is the request's fault)")
    faults.set("%s CKR_GENERAL_ERROR 1" % OPEN)
    err = rpc_error(c.decrypt, e.ciphertext, e.key_id, e.annotations)
    chk.check(err.code() != C.UNAVAILABLE,
              "a failed C_Decrypt answered UNAVAILABLE: %r" % err.details())

    h = chk.status(c)
    chk.check(h == "ok", "healthz %r after a mere decrypt failure" % h)
    chk.serves(c, 2, "after a decrypt failure")
    after = faults.counts()
    for fn in ("C_Initialize", "C_Finalize", "C_OpenSession", "C_Login",
               "C_CloseSession"):
        chk.check(after.get(fn, 0) == before.get(fn, 0),
                  "%s called after a mere decrypt failure: %d -> %d" % (
                      fn, before.get(fn, 0), after.get(fn, 0)))
    chk.done()


@pytest.mark.parametrize("rv", ["CKR_SESSION_HANDLE_INVALID",
                                "CKR_SESSION_CLOSED"])
def test_session_fault_reopens_session(fdaemon, faults, rv):
    d, c = fdaemon()
    round_trip(c)
    before = faults.counts()
    chk = Checks()
    faults.set("%s %s 1" % (SEAL, rv))
    r, dt = timed(c.encrypt, os.urandom(32), timeout=10)
    # It may also be retried on a fresh session and succeed.
    chk.check(not isinstance(r, grpc.RpcError) or
              r.code() == C.UNAVAILABLE,
              "the request that met %s got %s" % (rv, rpc_desc(r)))
    assert faults.count(SEAL) > before.get(SEAL, 0)
    chk.serves(c, BACK, "after %s" % rv)
    chk.poll_status(c, lambda h: h == "ok", BACK,
                    "Status not 'ok' after a %s" % rv)
    after = faults.counts()
    chk.check(after.get("C_OpenSession", 0) > before.get("C_OpenSession", 0),
              "no new session (C_OpenSession) after %s" % rv)
    chk.check(after.get("C_Initialize", 0) == before.get("C_Initialize", 0),
              "a session fault re-initialized the whole module")
    assert d.alive(), "p11kms died (status %s); stderr:\n%s" % (
        d.proc.returncode, d.stderr()[-2000:])
    chk.done()


def test_repeated_session_fault_stays_session_level(fdaemon, faults):
    """A request, or the health probe, that meets a lost session twice (on
    its session and on the fresh one) must not call the token down nor
    re-initialize the module: a new session is all it takes."""
    d, c = fdaemon()
    round_trip(c)
    before = faults.counts()
    chk = Checks()
    faults.set("%s CKR_SESSION_HANDLE_INVALID 2" % SEAL)
    r, dt = timed(c.encrypt, os.urandom(32), timeout=10)
    chk.check(not isinstance(r, grpc.RpcError) or
              r.code() == C.UNAVAILABLE, "got %s" % rpc_desc(r))
    # Let the probe (every PROBE s) meet the fault too, on an idle daemon.
    faults.set("%s CKR_SESSION_HANDLE_INVALID 2" % SEAL)
    deadline = time.monotonic() + 2.5 * PROBE
    while time.monotonic() < deadline:
        h = chk.status(c)
        chk.check(h == "ok", "Status went %r over a lost session" % h)
        time.sleep(0.05)
    faults.clear()
    chk.serves(c, 1.0, "after repeated session faults")
    after = faults.counts()
    chk.check(after.get("C_Initialize", 0) == before.get("C_Initialize", 0),
              "a session fault re-initialized the module")
    chk.check(after.get("C_OpenSession", 0) > before.get("C_OpenSession", 0),
              "no new session after the fault")
    assert d.alive(), d.stderr()[-2000:]
    chk.done()


# The token restarted: our sessions are logged out, the module still works.
LOGGED_OUT = "\n".join("%s CKR_USER_NOT_LOGGED_IN" % f for f in (
    SEAL_INIT, SEAL, OPEN_INIT, OPEN))

MODULE_FAULTS = [
    ("CKR_DEVICE_REMOVED", "* CKR_DEVICE_REMOVED", "removed"),
    ("CKR_TOKEN_NOT_PRESENT", "* CKR_TOKEN_NOT_PRESENT", "not present"),
    ("CKR_DEVICE_ERROR", "* CKR_DEVICE_ERROR", "device error"),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", "* CKR_CRYPTOKI_NOT_INITIALIZED",
     "not initialized"),
    ("CKR_USER_NOT_LOGGED_IN", LOGGED_OUT, "not logged in"),
]


@pytest.mark.parametrize("rv,rules,word", MODULE_FAULTS,
                         ids=[m[0] for m in MODULE_FAULTS])
def test_module_fault_reinitializes(fdaemon, faults, rv, rules, word):
    d, c = fdaemon()
    old = round_trip(c)
    before = faults.counts()
    chk = Checks()

    faults.set(rules)
    t0 = time.monotonic()
    # The first request may be the one that finds the fault: it fails at
    # once too, with UNAVAILABLE (never a wait to its deadline).
    chk.unavailable_fast(c, "first request after %s" % rv)
    h = chk.poll_status(c, lambda s: s != "ok", BACK,
                        "Status still 'ok' with the token failing %s" % rv)
    chk.check(h is not None and (word in words(h) or
                                 rv.lower() in h.lower()),
              "healthz %r does not say what is wrong (%s: want %r in it)" %
              (h, rv, word))
    for i in range(3):
        chk.unavailable_fast(c, "request %d while down (%s)" % (i + 2, rv))
    time.sleep(max(0, 2.5 - (time.monotonic() - t0)))
    down = faults.counts()
    inits = down.get("C_Initialize", 0) - before.get("C_Initialize", 0)
    chk.check(down.get("C_Finalize", 0) > before.get("C_Finalize", 0),
              "module never finalized (C_Finalize) after %s" % rv)
    chk.check(inits >= 1, "module never re-initialized (C_Initialize) "
              "after %s" % rv)
    chk.check(inits <= 12, "%d C_Initialize in %.1f s: re-init is not "
              "backing off" % (inits, time.monotonic() - t0))
    assert d.alive(), "p11kms died (status %s); stderr:\n%s" % (
        d.proc.returncode, d.stderr()[-2000:])

    faults.clear()
    chk.poll_status(c, lambda s: s == "ok", BACK,
                    "Status not 'ok' within %.0f s of the token coming back"
                    % BACK)
    if chk.serves(c, 1.0, "token back after %s" % rv):
        r = c.decrypt(old.ciphertext, old.key_id, old.annotations)
        chk.check(r.plaintext, "old ciphertext no longer opens")
    chk.check(faults.count("C_Login") > before.get("C_Login", 0),
              "no new C_Login after the module came back")
    chk.done()


def test_pin_fault_stops_logins_until_sighup(fdaemon, faults):
    d, c = fdaemon()
    round_trip(c)
    chk = Checks()

    # The token restarts (our sessions are logged out) with another PIN.
    logins0 = faults.count("C_Login")
    faults.set(LOGGED_OUT + "\nC_Login CKR_PIN_INCORRECT")
    chk.unavailable_fast(c, "token restarted")
    h = chk.poll_status(c, lambda s: "pin" in s.lower(), BACK + 2,
                        "Status never mentions the refused PIN")
    chk.check(h != "ok", "Status 'ok' with the PIN refused")
    logins1 = faults.count("C_Login")
    chk.check(logins1 - logins0 == 1, "%d C_Login calls for one refused PIN "
              "(want exactly 1)" % (logins1 - logins0))

    # No more attempts: not while refused, not even once the token would
    # take the PIN again, until the config is reloaded.
    time.sleep(1.5)
    faults.set(LOGGED_OUT)
    time.sleep(1.5)
    n = faults.count("C_Login")
    chk.check(n == logins1, "C_Login retried %d times after "
              "CKR_PIN_INCORRECT without a SIGHUP (would lock the token)"
              % (n - logins1))
    chk.unavailable_fast(c, "PIN refused, no reload yet")
    h = chk.status(c)
    chk.check(h is not None and "pin" in h.lower(),
              "healthz %r no longer mentions the PIN before SIGHUP" % h)

    faults.clear()
    assert d.alive(), "p11kms died (status %s); stderr:\n%s" % (
        d.proc.returncode, d.stderr()[-2000:])
    os.kill(d.proc.pid, signal.SIGHUP)
    chk.poll_status(c, lambda s: s == "ok", BACK + 2,
                    "Status not 'ok' after SIGHUP with the PIN good again")
    chk.serves(c, 1.0, "after SIGHUP")
    chk.check(faults.count("C_Login") > n, "no C_Login after SIGHUP")
    assert d.alive(), "p11kms died (status %s); stderr:\n%s" % (
        d.proc.returncode, d.stderr()[-2000:])
    chk.done()


# --------------------------------------------------------------------------
# hung token


def test_hung_call(fdaemon, faults, pb):
    workers = 4
    d, c = fdaemon(workers=workers)
    old = round_trip(c)
    threads0 = threads_of(d.proc.pid)
    enc0 = faults.count(SEAL)
    chk = Checks()

    faults.set("%s hang" % SEAL)
    # The server itself answers DEADLINE_EXCEEDED at the deadline (raw
    # HTTP/2: the client enforces no deadline of its own).
    body = pb[0].EncryptRequest(plaintext=os.urandom(32)).SerializeToString()
    h2c = H2(d.sockaddr(), timeout=4.0)
    try:
        t0 = time.monotonic()
        try:
            r = h2c.call(SVC + "Encrypt", body,
                         extra=[("grpc-timeout", "1000m")])
            dt = time.monotonic() - t0
            chk.check(r.grpc_status == 4, "hung call answered %r" % r)
            chk.check(0.9 <= dt <= 2.0, "DEADLINE_EXCEEDED after %.2f s "
                      "for a 1 s deadline" % dt)
        except TimeoutError:
            chk.check(False, "no answer 4 s after a 1 s deadline while the "
                      "token call hangs")
    finally:
        h2c.close()
    chk.check(faults.count(SEAL) > enc0,
              "the call never reached the token")

    # Status stays prompt; other work goes on while workers remain.
    for _ in range(3):
        chk.status(c)
        time.sleep(0.2)
    r, dt = timed(c.decrypt, old.ciphertext, old.key_id, old.annotations,
                  timeout=3)
    chk.check(not isinstance(r, grpc.RpcError),
              "Decrypt failed while only C_Encrypt hangs: %s" % rpc_desc(r))

    # Many more calls: stuck token calls and threads stay bounded.
    fs = [c.stub.Encrypt.future(pb[0].EncryptRequest(plaintext=b"x" * 32),
                                timeout=1.0) for _ in range(20)]
    for f in fs:
        try:
            f.result(timeout=5)
            chk.check(False, "an Encrypt succeeded while C_Encrypt hangs")
        except grpc.RpcError as e:
            chk.check(e.code() in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE,
                                   C.RESOURCE_EXHAUSTED),
                      "Encrypt during the hang: %s" % rpc_desc(e))
    stuck = faults.count(SEAL) - enc0
    chk.check(stuck <= 2 * workers, "%d token calls stuck at once" % stuck)
    threads = threads_of(d.proc.pid)
    chk.check(threads <= threads0 + 2 * workers,
              "threads grew from %d to %d with a hung token" %
              (threads0, threads))
    # Status tells the truth within a while (how soon is the daemon's
    # choice: a probe may be slow; 10 s is the apiserver's health timeout).
    chk.poll_status(c, lambda s: s != "ok", 10.0,
                    "Status says 'ok' while every seal hangs")

    faults.clear()
    chk.poll_status(c, lambda s: s == "ok", BACK + 2,
                    "Status not 'ok' after the hang ended")
    chk.serves(c, 1.0, "after the hang ended")
    assert d.alive(), "p11kms died (status %s); stderr:\n%s" % (
        d.proc.returncode, d.stderr()[-2000:])
    chk.done()


# --------------------------------------------------------------------------
# start-up


@pytest.mark.parametrize("case", ["wrong-pin", "pin-locked"])
def test_pin_fault_at_start_exits_2_after_one_login(token, faults, tmp_path,
                                                    case):
    pin_file = token.pin_file
    if case == "wrong-pin":
        pin_file = os.path.join(str(tmp_path), "wrong.pin")
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("9999\n")
    else:
        faults.set("C_Login CKR_PIN_LOCKED")
    env = FaultToken(token, faults).env()
    r = run_p11kms(["-s", os.path.join(str(tmp_path), "kms.sock"),
                    "-k", token.uri(), "-m", FAULT_SO, "-p", pin_file,
                    "--probe-interval", str(PROBE)], env=env, timeout=10)
    assert r.returncode == 2, "exit status %d; stderr:\n%s" % (r.returncode,
                                                               r.stderr)
    assert faults.count("C_Login") == 1, \
        "C_Login called %d times with a refused PIN" % faults.count("C_Login")
    assert "pin" in r.stderr.lower(), r.stderr
