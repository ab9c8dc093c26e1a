#!/usr/bin/python3
"""p11kms soak test: minutes of mixed load with token faults injected.

    P11KMS=$PWD/build/p11kms SOAK_SECONDS=180 \
        /usr/bin/python3 tests/soak/soak.py

(`make soak`, `make soak SOAK_SECONDS=30`, `make soak SANITIZE=1` run it.)
See tests/soak/README.md for how to read the report.

A throwaway SoftHSM token (tests/mktoken.sh) and the daemon live in a temp
dir. The daemon loads the fault-injecting module (tests/faultmod, found as
<dir of $P11KMS>/tests/libp11kms-fault.so) in front of SoftHSM, with
--probe-interval 1. Several client threads on a few gRPC channels (each
its own connection) drive v2 Status/Encrypt/Decrypt and v1beta1
Encrypt/Decrypt, some with short deadlines, some cancelled, a few with
tampered ciphertexts, plus one thread churning short-lived connections,
while a schedule cycles through token faults and SIGHUP reloads. Every
successful Decrypt is checked against the plaintext that was encrypted;
a wrong plaintext is a hard failure.

At the end the faults are cleared, the daemon must serve again (and open
every ciphertext kept from the run), it is stopped with SIGTERM and must
exit 0; an ASan build's stderr must hold no sanitizer report. RSS (VmRSS,
VmHWM), fds and threads are sampled at start, after the warm-up, every
10 s and at the end. The script prints a report and one line
"SOAK_JSON {...}", and exits 1 on: a wrong answer, an unexpected status
(one that no fault explains), a crash, a daemon that does not serve after
the faults are cleared, /metrics gauges not back to idle, a connection the
daemon holds after its client closed it, a non-zero exit status, a
sanitizer report, RSS growth past the bound after the warm-up, or an fd
leak. Exit 2: the run could not start (missing binary, module, tools);
130: interrupted (the daemon is stopped all the same).

Environment (all optional but P11KMS):
  P11KMS               the daemon (default <repo>/build/p11kms)
  SOAK_SECONDS         length of the load, warm-up included (default 180)
  SOAK_THREADS         client threads (default 6)
  SOAK_CHANNELS        gRPC channels, i.e. connections (default 3)
  SOAK_WORKERS         daemon --workers (default 4)
  SOAK_RSS_BOUND_MIB   allowed RSS growth after the warm-up (default 32;
                       an ASan build runs with quarantine_size_mb=16 unless
                       ASAN_OPTIONS sets it, and adds that, see README)
  SOAK_FAULT_MODULE    the fault module (default next to P11KMS, above)
  SOAK_KEEP=1          keep the temp dir (token, daemon log) afterwards
"""

import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# The shared test library: stubs, tokens, fault control, /proc, metrics.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))
from p11kmstest import (REPO, MKTOKEN, Faults, parse_metrics,  # noqa: E402
                        proc_status, http_unix)
from p11kmstest import MODULE as SOFTHSM  # noqa: E402
import p11kmstest  # noqa: E402

SAMPLE_EVERY = 10.0        # seconds between RSS samples
RPC_TIMEOUT = 5.0          # deadline of an ordinary load call
STOP_TIMEOUT = 30.0        # SIGTERM -> exit (5 s grace + LeakSanitizer)
READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 20.0      # faults cleared -> serving steadily
SETTLE_CLEAN = 3.0         # seconds of clean round trips that count
FD_SLACK = 32              # fds the daemon may gain over the run
KEEP_CIPHERTEXTS = 2000    # recent ciphertexts kept for Decrypt
OLD_CIPHERTEXTS = 64       # made in the warm-up, kept to the end
ASAN_QUARANTINE_MB = 16    # ASan build: quarantine_size_mb unless set

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "LeakSanitizer", "runtime error:",
                   "ERROR: ThreadSanitizer")

# Statuses a fault (or our own deadline / cancel) explains. Anything else on
# a well-formed request is unexpected.
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED",
             "RESOURCE_EXHAUSTED"}


def env_int(name, default):
    v = os.environ.get(name, "")
    try:
        return int(v) if v.strip() else default
    except ValueError:
        sys.exit("soak: %s=%r is not a whole number" % (name, v))


HEX = re.compile(r"\b[0-9a-f]{16,}\b")
NUM = re.compile(r"\b\d+\b")


def normalize(details):
    """A failure's details with key ids and numbers masked, for counting."""
    if details is None:
        return "(no details)"
    d = HEX.sub("<id>", str(details))
    d = NUM.sub("<n>", d)
    return d[:160]


def log(msg):
    sys.stdout.write("soak: %s\n" % msg)
    sys.stdout.flush()


class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


# --------------------------------------------------------------------------
# setup: stubs, token, fault control


def generate_stubs(out):
    p11kmstest.generate_stubs(out, ("kms_v2.proto", "kms_v1beta1.proto"))


make_token = p11kmstest.mktoken


# --------------------------------------------------------------------------
# the daemon's process


def maps_have(pid, word):
    try:
        with open("/proc/%d/maps" % pid) as f:
            return word in f.read()
    except OSError:
        return False


def links_asan(path):
    try:
        r = subprocess.run(["ldd", path], capture_output=True, text=True,
                           timeout=30)
        return "libasan" in r.stdout
    except (OSError, subprocess.SubprocessError):
        return False


def http_get_unix(path, url, timeout=3.0):
    """GET url over a unix socket: (status, body) or None."""
    try:
        code, _, body = http_unix(path, url, timeout=timeout)
    except (OSError, ValueError, IndexError):
        return None
    return code, body


def conn_census(pid, sock):
    """The daemon's connections on sock (ss -xp): how many, how many have
    their client end in this process, and the ones whose client end is in
    no process at all (the daemon missed the close). None without ss."""
    try:
        out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True,
                             timeout=10).stdout
        alls = subprocess.run(["ss", "-xapn"], capture_output=True,
                              text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(link[8:-1])
    owned = {}                  # socket inode -> has an owning process
    for ln in alls.splitlines():
        t = ln.split()
        if len(t) >= 6 and t[5].isdigit():
            owned[t[5]] = "users:" in ln
    peers = []
    for ln in out.splitlines():
        t = ln.split()
        if "pid=%d," % pid not in ln or sock not in t:
            continue
        i = t.index(sock)
        if len(t) > i + 3:
            peers.append((t[i + 1], t[i + 3]))
    return {"daemon": len(peers),
            "client_here": sum(1 for _, x in peers if x in mine),
            "orphaned": ["daemon socket %s (peer %s)" % (me, x)
                         for me, x in peers
                         if x not in mine and not owned.get(x, False)]}


# --------------------------------------------------------------------------
# load


class Stats:
    """Outcomes by op and by fault phase, latencies of successes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.defaultdict(collections.Counter)
        self.phases = collections.defaultdict(collections.Counter)
        self.lat = collections.defaultdict(list)
        self.wrong = []           # (op, phase, what)
        self.unexpected = []      # (op, phase, code, details)
        self.n_unexpected = 0
        self.reasons = collections.Counter()   # (code, details) -> n
        self.phase_reasons = collections.defaultdict(collections.Counter)
        self.health = collections.Counter()
        self.status_max = 0.0

    def record(self, op, phase, outcome, dt=None, details=None,
               unexpected=False):
        with self.lock:
            self.ops[op][outcome] += 1
            self.phases[phase]["OK" if outcome == "OK" else "failed"] += 1
            if outcome == "OK" and dt is not None:
                self.lat[op].append(dt)
            if outcome != "OK":
                key = (outcome, normalize(details))
                self.reasons[key] += 1
                self.phase_reasons[phase][key] += 1
            if unexpected:
                self.n_unexpected += 1
                if len(self.unexpected) < 1000:
                    self.unexpected.append((op, phase, outcome, details))

    def wrong_answer(self, op, phase, what):
        with self.lock:
            self.ops[op]["WRONG"] += 1
            if len(self.wrong) < 1000:
                self.wrong.append((op, phase, what))

    def totals(self):
        with self.lock:
            served = sum(c["OK"] for c in self.ops.values())
            failed = collections.Counter()
            for c in self.ops.values():
                for k, n in c.items():
                    if k != "OK":
                        failed[k] += n
            return served, failed


class Pool:
    """Ciphertexts a Decrypt may pick: a ring of recent ones."""

    def __init__(self, cap):
        self.cap = cap
        self.items = []
        self.next = 0
        self.lock = threading.Lock()

    def add(self, item):
        with self.lock:
            if len(self.items) < self.cap:
                self.items.append(item)
            else:
                self.items[self.next] = item
                self.next = (self.next + 1) % self.cap

    def pick(self):
        with self.lock:
            return random.choice(self.items) if self.items else None

    def all(self):
        with self.lock:
            return list(self.items)


class Load:
    # op name, weight
    MIX = [("v2.Status", 10), ("v2.Encrypt", 24), ("v2.Decrypt", 24),
           ("v1.Encrypt", 8), ("v1.Decrypt", 8), ("short", 10),
           ("cancel", 8), ("v2.Decrypt/tampered", 3), ("v2.Decrypt/old", 5)]

    def __init__(self, grpc, pb2, pb2_grpc, v1pb, v1grpc, channels, stats):
        self.grpc = grpc
        self.pb2 = pb2
        self.v1pb = v1pb
        self.stubs = [(pb2_grpc.KeyManagementServiceStub(ch),
                       v1grpc.KeyManagementServiceStub(ch)) for ch in channels]
        self.stats = stats
        self.v2ct = Pool(KEEP_CIPHERTEXTS)
        self.v1ct = Pool(KEEP_CIPHERTEXTS)
        self.old = []             # (pt, resp) from the warm-up
        self.phase = "warm-up"
        self.stop = threading.Event()
        names = [m[0] for m in self.MIX]
        weights = [m[1] for m in self.MIX]
        self.choose = lambda rnd: rnd.choices(names, weights)[0]

    # -- one call, classified
    def _call(self, op, fn, check=None, expect=()):
        phase = self.phase
        t0 = time.monotonic()
        try:
            r = fn()
        except self.grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            self.stats.record(op, phase, code, details=e.details(),
                              unexpected=code not in TRANSIENT and
                              code not in expect)
            return None
        except self.grpc.FutureCancelledError:
            self.stats.record(op, phase, "CANCELLED",
                              details="(cancelled by the client)")
            return None
        dt = time.monotonic() - t0
        if check is not None:
            bad = check(r)
            if bad:
                self.stats.wrong_answer(op, phase, bad)
                return None
        self.stats.record(op, phase, "OK", dt)
        if op == "v2.Status":
            with self.stats.lock:
                self.stats.health["ok" if r.healthz == "ok" else
                                  "not ok"] += 1
                self.stats.status_max = max(self.stats.status_max, dt)
        return r

    @staticmethod
    def _plaintext(rnd):
        return os.urandom(rnd.choice((32, 32, 32, 16, 1, 64, 256, 512)))

    def _v2_dec_req(self, resp, ct=None):
        return self.pb2.DecryptRequest(
            ciphertext=ct if ct is not None else resp.ciphertext,
            key_id=resp.key_id, annotations=dict(resp.annotations),
            uid="soak-dec")

    @staticmethod
    def _enc_check(r):
        if not r.ciphertext:
            return "empty ciphertext"
        if not r.key_id:
            return "empty key_id"
        return None

    @staticmethod
    def _dec_check(pt):
        return lambda r: None if r.plaintext == pt else \
            "plaintext %d bytes, want %d (%s...)" % (
                len(r.plaintext), len(pt), r.plaintext[:8].hex())

    def v2_encrypt(self, stub, rnd, op="v2.Encrypt", timeout=RPC_TIMEOUT,
                   keep=True):
        pt = self._plaintext(rnd)
        r = self._call(op, lambda: stub.Encrypt(
            self.pb2.EncryptRequest(plaintext=pt, uid="soak-%d" %
                                    rnd.getrandbits(32)), timeout=timeout),
            self._enc_check)
        if r is not None and keep:
            self.v2ct.add((pt, r))
        return pt, r

    def v2_decrypt(self, stub, item, op="v2.Decrypt", timeout=RPC_TIMEOUT):
        pt, resp = item
        return self._call(op, lambda: stub.Decrypt(self._v2_dec_req(resp),
                                                   timeout=timeout),
                          self._dec_check(pt))

    def v1_encrypt(self, stub, rnd):
        pt = self._plaintext(rnd)
        r = self._call("v1.Encrypt", lambda: stub.Encrypt(
            self.v1pb.EncryptRequest(version="v1beta1", plain=pt),
            timeout=RPC_TIMEOUT),
            lambda r: None if r.cipher else "empty cipher")
        if r is not None:
            self.v1ct.add((pt, r.cipher))

    def v1_decrypt(self, stub, item):
        pt, ct = item
        self._call("v1.Decrypt", lambda: stub.Decrypt(
            self.v1pb.DecryptRequest(version="v1beta1", cipher=ct),
            timeout=RPC_TIMEOUT),
            lambda r: None if r.plain == pt else
            "plain %d bytes, want %d" % (len(r.plain), len(pt)))

    def cancelled(self, stub, rnd):
        item = self.v2ct.pick()
        if item is not None and rnd.random() < 0.5:
            op, pt = "v2.Decrypt/cancel", item[0]
            f = stub.Decrypt.future(self._v2_dec_req(item[1]),
                                    timeout=RPC_TIMEOUT)
            check = self._dec_check(pt)
        else:
            op, pt = "v2.Encrypt/cancel", self._plaintext(rnd)
            f = stub.Encrypt.future(self.pb2.EncryptRequest(plaintext=pt),
                                    timeout=RPC_TIMEOUT)
            check = self._enc_check
        time.sleep(rnd.random() * 0.01)
        f.cancel()
        self._call(op, lambda: f.result(timeout=RPC_TIMEOUT + 1), check)

    def tampered(self, stub, rnd):
        item = self.v2ct.pick()
        if item is None:
            return
        pt, resp = item
        ct = bytearray(resp.ciphertext)
        i = rnd.randrange(len(ct))
        ct[i] ^= 1 << rnd.randrange(8)
        ct = bytes(ct)

        def check(r):
            return "tampered ciphertext (bit flipped in byte %d of %d) " \
                "opened to %d bytes%s" % (i, len(ct), len(r.plaintext),
                                          " (the original plaintext)" if
                                          r.plaintext == pt else "")
        self._call("v2.Decrypt/tampered", lambda: stub.Decrypt(
            self._v2_dec_req(resp, ct), timeout=RPC_TIMEOUT), check,
            expect=("INVALID_ARGUMENT", "NOT_FOUND"))

    def one(self, stubs, rnd):
        v2, v1 = stubs
        op = self.choose(rnd)
        if op == "v2.Status":
            self._call(op, lambda: v2.Status(self.pb2.StatusRequest(),
                                             timeout=RPC_TIMEOUT))
        elif op == "v2.Encrypt":
            self.v2_encrypt(v2, rnd)
        elif op == "v2.Decrypt":
            item = self.v2ct.pick()
            if item is None:
                self.v2_encrypt(v2, rnd)
            else:
                self.v2_decrypt(v2, item)
        elif op == "v1.Encrypt":
            self.v1_encrypt(v1, rnd)
        elif op == "v1.Decrypt":
            item = self.v1ct.pick()
            if item is None:
                self.v1_encrypt(v1, rnd)
            else:
                self.v1_decrypt(v1, item)
        elif op == "short":
            t = rnd.choice((0.005, 0.02, 0.05, 0.1, 0.2))
            item = self.v2ct.pick()
            if item is not None and rnd.random() < 0.5:
                self.v2_decrypt(v2, item, op="v2.Decrypt/short", timeout=t)
            else:
                self.v2_encrypt(v2, rnd, op="v2.Encrypt/short", timeout=t,
                                keep=False)
        elif op == "cancel":
            self.cancelled(v2, rnd)
        elif op == "v2.Decrypt/tampered":
            self.tampered(v2, rnd)
        elif op == "v2.Decrypt/old":
            if self.old:
                self.v2_decrypt(v2, rnd.choice(self.old), op=op)

    def worker(self, idx):
        rnd = random.Random(idx * 7919 + int(time.time()))
        stubs = self.stubs[idx % len(self.stubs)]
        while not self.stop.is_set():
            try:
                self.one(stubs, rnd)
            except Exception as e:      # a bug here, not in the daemon
                self.stats.record("client-error", self.phase,
                                  type(e).__name__, details=repr(e)[:300],
                                  unexpected=True)
                time.sleep(0.1)

    def churn(self, new_channel, v2grpc):
        """Short-lived connections: a fresh channel, a few calls, closed;
        every third one is closed with a call still in flight."""
        rnd = random.Random(int(time.time()) ^ 0x5eed)
        n = 0
        while not self.stop.is_set():
            n += 1
            ch = new_channel()
            try:
                stub = v2grpc.KeyManagementServiceStub(ch)
                if n % 3 == 0:
                    # Connected first: python grpc closing a channel that
                    # is still connecting can keep its socket open.
                    self.grpc.channel_ready_future(ch).result(
                        timeout=RPC_TIMEOUT)
                    f = stub.Encrypt.future(self.pb2.EncryptRequest(
                        plaintext=os.urandom(32)), timeout=RPC_TIMEOUT)
                    time.sleep(rnd.random() * 0.005)
                    ch.close()
                    ch = None
                    self._call("conn.Encrypt/closed",
                               lambda: f.result(timeout=RPC_TIMEOUT + 1),
                               self._enc_check,
                               expect=("CANCELLED", "UNKNOWN"))
                else:
                    self._call("conn.Status", lambda: stub.Status(
                        self.pb2.StatusRequest(), timeout=RPC_TIMEOUT,
                        wait_for_ready=True))
                    pt, r = self.v2_encrypt(stub, rnd, op="conn.Encrypt",
                                            keep=False)
                    if r is not None:
                        self.v2_decrypt(stub, (pt, r), op="conn.Decrypt")
            except Exception as e:      # a bug here, not in the daemon
                self.stats.record("client-error", self.phase,
                                  type(e).__name__, details=repr(e)[:300],
                                  unexpected=True)
            finally:
                if ch is not None:
                    ch.close()
            self.stop.wait(0.2)


# --------------------------------------------------------------------------
# the fault schedule: (name, seconds, control text, SIGHUP at start)

SCHEDULE = [
    ("none", 2.0, "", False),
    ("session-invalid", 3.0, "C_Encrypt CKR_SESSION_HANDLE_INVALID 5", False),
    ("reload", 3.0, "", True),
    ("device-removed", 3.0, "* CKR_DEVICE_REMOVED", False),
    ("recover", 4.0, "", False),
    ("decrypt-delay", 3.0, "C_Decrypt delay 200", True),
    ("encrypt-hang", 2.0, "C_Encrypt hang", False),
    ("recover", 4.0, "", False),
]


# --------------------------------------------------------------------------


def main():
    seconds = env_int("SOAK_SECONDS", 180)
    nthreads = max(1, env_int("SOAK_THREADS", 6))
    nchannels = max(1, env_int("SOAK_CHANNELS", 3))
    workers = max(1, env_int("SOAK_WORKERS", 4))
    binpath = os.environ.get("P11KMS") or os.path.join(REPO, "build",
                                                       "p11kms")
    if not os.path.isabs(binpath):
        binpath = os.path.join(REPO, binpath)
    fault_so = os.environ.get("SOAK_FAULT_MODULE") or os.path.join(
        os.path.dirname(binpath), "tests", "libp11kms-fault.so")
    keep = os.environ.get("SOAK_KEEP", "") not in ("", "0")

    for path, what in ((binpath, "p11kms binary (set P11KMS)"),
                       (fault_so, "fault module (make soak builds it)"),
                       (MKTOKEN, "tests/mktoken.sh"), (SOFTHSM, "SoftHSM")):
        if not os.path.exists(path):
            log("missing %s: %s" % (what, path))
            return 2
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            log("%s is not installed" % tool)
            return 2
    asan = "build-asan" in binpath or links_asan(binpath)
    asan_opts = os.environ.get("ASAN_OPTIONS", "")
    quarantine = 0
    if asan:
        # ASan keeps freed memory in a quarantine (256 MiB by default),
        # which alone would look like a leak here: make it small, and
        # allow for it. LeakSanitizer at exit is the leak check there.
        if "quarantine_size_mb" not in asan_opts:
            asan_opts += ":quarantine_size_mb=%d" % ASAN_QUARANTINE_MB
        if "detect_leaks" not in asan_opts:
            asan_opts += ":detect_leaks=1"
        asan_opts = asan_opts.strip(":")
        m = re.search(r"quarantine_size_mb=(\d+)", asan_opts)
        quarantine = int(m.group(1)) if m else 256
    bound_mib = env_int("SOAK_RSS_BOUND_MIB", 32 + quarantine)
    warmup = min(10.0, max(3.0, seconds / 10.0))

    base = tempfile.mkdtemp(prefix="p11kms-soak-")
    proc = None
    errf = None
    faults = Faults(base)
    channels = []
    load = None
    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    fails = []
    result = {"seconds": seconds, "binary": binpath, "asan": asan,
              "client_threads": nthreads, "channels": nchannels,
              "workers": workers}
    try:
        try:
            generate_stubs(os.path.join(base, "stubs"))
            import grpc
            import kms_v1beta1_pb2
            import kms_v1beta1_pb2_grpc
            import kms_v2_pb2
            import kms_v2_pb2_grpc
            conf, pin = make_token(os.path.join(base, "tok"))
        except (ImportError, RuntimeError, OSError,
                subprocess.SubprocessError) as e:
            log("setup failed: %s" % e)
            return 2
        faults.clear()
        sock = os.path.join(base, "kms.sock")
        ops = os.path.join(base, "ops.sock")
        uri = "pkcs11:token=kms;object=kek1;type=secret-key"
        args = [binpath, "-s", sock, "-k", uri, "-m", fault_so, "-p", pin,
                "--probe-interval", "1", "--workers", str(workers),
                "--ops-listen", "unix:" + ops]
        env = dict(os.environ, SOFTHSM2_CONF=conf,
                   P11KMS_FAULT_CONTROL=faults.control,
                   P11KMS_FAULT_COUNTS=faults.counts_path)
        if asan:
            env["ASAN_OPTIONS"] = asan_opts
            result["asan_options"] = asan_opts
        errpath = os.path.join(base, "daemon.stderr")
        errf = open(errpath, "wb")
        log("%s (%s), %d s (warm-up %.0f s), %d threads on %d channels, "
            "--workers %d, temp dir %s" % (binpath, "ASan" if asan else
                                           "no ASan", seconds, warmup,
                                           nthreads, nchannels, workers,
                                           base))
        proc = subprocess.Popen(args, env=env, cwd=base,
                                stdin=subprocess.DEVNULL, stdout=errf,
                                stderr=errf)
        result["pid"] = proc.pid

        def stderr_text():
            try:
                with open(errpath, "rb") as f:
                    return f.read().decode("utf-8", "replace")
            except OSError:
                return ""

        def alive():
            return proc.poll() is None

        # -- ready: socket accepts and Status answers
        chopts = [("grpc.use_local_subchannel_pool", 1),
                  ("grpc.initial_reconnect_backoff_ms", 100),
                  ("grpc.min_reconnect_backoff_ms", 100),
                  ("grpc.max_reconnect_backoff_ms", 500)]
        target = "unix://" + sock
        channels = [grpc.insecure_channel(target, options=chopts)
                    for _ in range(nchannels)]
        ctl = kms_v2_pb2_grpc.KeyManagementServiceStub(channels[0])
        ctl1 = kms_v1beta1_pb2_grpc.KeyManagementServiceStub(channels[0])
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if not alive():
                log("p11kms exited at start with status %s; stderr:\n%s" %
                    (proc.returncode, stderr_text()[-3000:]))
                return 1
            try:
                h = ctl.Status(kms_v2_pb2.StatusRequest(), timeout=2,
                               wait_for_ready=True).healthz
                if h == "ok":
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                log("p11kms not serving after %.0f s; stderr:\n%s" %
                    (READY_TIMEOUT, stderr_text()[-3000:]))
                return 1
            time.sleep(0.1)
        for ch in channels[1:]:
            grpc.channel_ready_future(ch).result(timeout=10)
        if asan is False and maps_have(proc.pid, "libasan"):
            asan = result["asan"] = True
        samples = []

        def sample(label, t):
            s = proc_status(proc.pid)
            if s is None:
                return None
            s = dict(s, t=round(t, 1), at=label)
            samples.append(s)
            return s

        t_start = time.monotonic()
        s0 = sample("start", 0.0)
        if s0 is None:
            log("p11kms vanished right after start (status %s); stderr:\n%s"
                % (proc.poll(), stderr_text()[-3000:]))
            return 1
        stats = Stats()
        load = Load(grpc, kms_v2_pb2, kms_v2_pb2_grpc, kms_v1beta1_pb2,
                    kms_v1beta1_pb2_grpc, channels, stats)

        # ciphertexts from before any fault, decrypted to the end
        for i in range(OLD_CIPHERTEXTS):
            pt = os.urandom(32)
            r = ctl.Encrypt(kms_v2_pb2.EncryptRequest(plaintext=pt),
                            timeout=RPC_TIMEOUT)
            load.old.append((pt, r))

        threads = [threading.Thread(target=load.worker, args=(i,),
                                    daemon=True, name="load%d" % i)
                   for i in range(nthreads)]
        threads.append(threading.Thread(
            target=load.churn, args=(lambda: grpc.insecure_channel(
                target, options=chopts), kms_v2_pb2_grpc),
            daemon=True, name="churn"))
        for t in threads:
            t.start()

        sighups = 0
        phase_runs = collections.Counter()
        crashed = False
        next_sample = SAMPLE_EVERY
        baseline = None
        end = t_start + seconds

        def progress(s):
            served, failed = stats.totals()
            log("t=%5.1f s  %-15s served %7d  failed %6d  RSS %6d KiB  "
                "HWM %6d KiB  fds %3d  threads %2d" % (
                    s["t"], load.phase, served, sum(failed.values()),
                    s["VmRSS"], s["VmHWM"], s["fds"], s["Threads"]))

        def tick(until):
            """Sleeps to until (monotonic), sampling; False on a crash."""
            nonlocal next_sample
            while True:
                now = time.monotonic()
                if not alive():
                    return False
                if now - t_start >= next_sample:
                    s = sample("t", now - t_start)
                    if s:
                        progress(s)
                    next_sample += SAMPLE_EVERY
                if now >= until:
                    return True
                time.sleep(min(0.2, until - now))

        progress(s0)
        if not tick(min(end, t_start + warmup)):
            crashed = True
        else:
            baseline = sample("after warm-up", time.monotonic() - t_start)
            progress(baseline)
            i = 0
            while time.monotonic() < end:
                name, dur, rules, hup = SCHEDULE[i % len(SCHEDULE)]
                i += 1
                faults.set(rules)
                load.phase = name
                phase_runs[name] += 1
                if hup:
                    os.kill(proc.pid, signal.SIGHUP)
                    sighups += 1
                if not tick(min(end, time.monotonic() + dur)):
                    crashed = True
                    break

        # -- stop the load, clear the faults
        faults.clear()
        load.phase = "end"
        load.stop.set()
        for t in threads:
            t.join(timeout=RPC_TIMEOUT + 5)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            fails.append("client threads stuck after stop: %s" % stuck)
        t_load = time.monotonic() - t_start

        final = {}
        if crashed or not alive():
            crashed = True
            fails.append("daemon died during the load: status %s" %
                         proc.returncode)
        else:
            # -- the daemon must serve normally again: Status "ok" and
            # round trips succeeding without a break for SETTLE_CLEAN s
            # (longer than any recovery the faults may have left pending)
            t0 = time.monotonic()
            ok_at = serve_at = settled = streak = None
            settle_fail = collections.Counter()
            settle_fail_ok = 0
            probe = Stats()
            pl = Load(grpc, kms_v2_pb2, kms_v2_pb2_grpc, kms_v1beta1_pb2,
                      kms_v1beta1_pb2_grpc, channels[:1], probe)
            pl.phase = "settle"
            prnd = random.Random(2)
            while time.monotonic() - t0 < SETTLE_TIMEOUT:
                now = time.monotonic()
                try:
                    h = ctl.Status(kms_v2_pb2.StatusRequest(),
                                   timeout=2).healthz
                except grpc.RpcError:
                    h = None
                if h == "ok" and ok_at is None:
                    ok_at = now - t0
                before = probe.totals()[0]
                pt, r = pl.v2_encrypt(ctl, prnd, keep=False)
                if r is not None:
                    pl.v2_decrypt(ctl, (pt, r))
                good = probe.totals()[0] - before == 2 and h == "ok"
                if good:
                    if serve_at is None:
                        serve_at = now - t0
                    if streak is None:
                        streak = now
                    elif now - streak >= SETTLE_CLEAN:
                        settled = now - t0
                        break
                else:
                    streak = None
                    if h == "ok":
                        settle_fail_ok += 1
                time.sleep(0.05)
            for (code, det), k in probe.reasons.items():
                settle_fail["%s %s" % (code, det)] += k
            final["status_ok_after_s"] = ok_at and round(ok_at, 2)
            final["serving_after_s"] = serve_at and round(serve_at, 2)
            final["settled_after_s"] = settled and round(settled, 2)
            final["settle_failures"] = dict(settle_fail)
            final["settle_failures_while_status_ok"] = settle_fail_ok
            stats.wrong.extend(probe.wrong)
            if settled is None:
                fails.append("not serving steadily within %.0f s of "
                             "clearing the faults (Status ok after %s s, "
                             "failures %s)" % (SETTLE_TIMEOUT, ok_at,
                                               dict(settle_fail)))
            bad = []
            n = 0
            fstats = Stats()
            chk = Load(grpc, kms_v2_pb2, kms_v2_pb2_grpc, kms_v1beta1_pb2,
                       kms_v1beta1_pb2_grpc, channels[:1], fstats)
            chk.phase = "final"
            rnd = random.Random(1)
            for _ in range(20):
                pt, r = chk.v2_encrypt(ctl, rnd)
                if r is not None:
                    chk.v2_decrypt(ctl, (pt, r))
                chk.v1_encrypt(ctl1, rnd)
            for item in chk.v1ct.all():
                chk.v1_decrypt(ctl1, item)
            for item in load.old + load.v2ct.all():
                chk.v2_decrypt(ctl, item, op="v2.Decrypt/kept")
            for item in load.v1ct.all():
                chk.v1_decrypt(ctl1, item)
            n = sum(sum(c.values()) for c in fstats.ops.values())
            served, failed = fstats.totals()
            final["calls"] = n
            final["served"] = served
            final["failed"] = dict(failed)
            final["kept_ciphertexts_checked"] = len(load.old) + \
                len(load.v2ct.all()) + len(load.v1ct.all())
            if failed:
                bad = fstats.unexpected[:3] + fstats.wrong[:3]
                fails.append("after the faults were cleared %d of %d calls "
                             "failed (%s); e.g. %s" % (
                                 sum(failed.values()), n, dict(failed), bad))
            stats.wrong.extend(fstats.wrong)

            # -- gauges back to idle; every connection the daemon holds
            # has a live client end (ours: python grpc itself may keep a
            # socket of a closed channel, which is not the daemon's leak)
            m = census = None
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                census = conn_census(proc.pid, sock)
                r = http_get_unix(ops, "/metrics")
                if r and r[0] == 200:
                    m = parse_metrics(r[1])
                    if m.get("p11kms_grpc_requests_in_flight") == 0 and \
                            m.get("p11kms_pool_busy_workers") == 0 and \
                            m.get("p11kms_pool_queued_jobs") == 0 and \
                            (census is None or (
                                not census["orphaned"] and
                                m.get("p11kms_grpc_connections") ==
                                census["daemon"])):
                        break
                time.sleep(0.2)
            final["connections"] = census
            if census is not None and census["orphaned"]:
                fails.append("the daemon holds %d connection(s) whose client "
                             "end is closed: %s" % (len(census["orphaned"]),
                                                    census["orphaned"]))
            if m is None:
                fails.append("no /metrics from the ops socket")
            else:
                g = {k: m.get("p11kms_" + k) for k in (
                    "grpc_requests_in_flight", "pool_busy_workers",
                    "pool_queued_jobs", "grpc_connections", "pool_workers",
                    "token_up", "token_state_changes_total")}
                final["metrics"] = g
                by_code = collections.Counter()
                for k, v in m.items():
                    if k.startswith("p11kms_grpc_requests_total{"):
                        code = k.split('code="', 1)[1].split('"', 1)[0]
                        by_code[code] += int(v)
                final["server_requests_by_code"] = dict(by_code)
                for k in ("grpc_requests_in_flight", "pool_busy_workers",
                          "pool_queued_jobs"):
                    if g[k] != 0:
                        fails.append("idle daemon reports %s = %s (a call "
                                     "or job never finished)" % (k, g[k]))
                if census is not None and \
                        g["grpc_connections"] != census["daemon"]:
                    fails.append("p11kms_grpc_connections is %s but the "
                                 "daemon has %d connected sockets" % (
                                     g["grpc_connections"],
                                     census["daemon"]))
            time.sleep(1.0)
            send = sample("end", time.monotonic() - t_start)
            if send:
                progress(send)

        # -- stop
        t0 = time.monotonic()
        if alive():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                fails.append("p11kms ignored SIGTERM for %.0f s (killed)" %
                             STOP_TIMEOUT)
        stop_s = time.monotonic() - t0
        rc = proc.returncode
        if rc != 0 and not crashed:
            fails.append("exit status %s after SIGTERM" % rc)
        text = stderr_text()
        rep = None
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                rep = text[max(0, i - 300):i + 3000]
                break
        if rep:
            fails.append("sanitizer report in the daemon's stderr")
        if crashed:
            fails.append("crash: exit status %s" % rc)

        # -- RSS / fd verdicts
        send = samples[-1] if samples and samples[-1]["at"] == "end" else None
        rss_growth = None
        if baseline and send:
            rss_growth = send["VmRSS"] - baseline["VmRSS"]
            if rss_growth > bound_mib * 1024:
                fails.append("RSS grew %d KiB after the warm-up (bound %d "
                             "MiB)" % (rss_growth, bound_mib))
            if send["fds"] > s0["fds"] + FD_SLACK:
                fails.append("fds grew from %d to %d" % (s0["fds"],
                                                          send["fds"]))
        served, failed = stats.totals()
        unexpected = stats.unexpected
        if stats.wrong:
            fails.append("%d wrong answer(s)" % len(stats.wrong))
        if unexpected:
            fails.append("%d unexpected status(es)" % stats.n_unexpected)

        lines = text.splitlines()
        levels = collections.Counter()
        for ln in lines:
            for w in ln.split():
                if w.startswith("level="):
                    levels[w[6:]] += 1
                    break
        result.update({
            "load_seconds": round(t_load, 1), "warmup_seconds": warmup,
            "served": served, "failed": dict(failed),
            "failed_total": sum(failed.values()),
            "wrong_answers": len(stats.wrong),
            "unexpected_statuses": stats.n_unexpected,
            "failure_reasons": {"%s %s" % k: n for k, n in
                                stats.reasons.most_common(25)},
            "by_op": {op: dict(c) for op, c in sorted(stats.ops.items())},
            "by_phase": {p: dict(c) for p, c in stats.phases.items()},
            "failure_reasons_by_phase": {
                p: {"%s %s" % k: n for k, n in c.most_common(5)}
                for p, c in stats.phase_reasons.items()},
            "status_healthz": dict(stats.health),
            "status_max_ms": round(stats.status_max * 1000, 1),
            "rss_kib": {"start": s0["VmRSS"],
                        "after_warmup": baseline and baseline["VmRSS"],
                        "end": send and send["VmRSS"],
                        "growth_after_warmup": rss_growth,
                        "bound_kib": bound_mib * 1024},
            "hwm_kib": {"start": s0["VmHWM"], "end": send and send["VmHWM"]},
            "fds": {"start": s0["fds"], "end": send and send["fds"]},
            "threads": {"start": s0["Threads"],
                        "end": send and send["Threads"]},
            "samples": samples,
            "phases_run": dict(phase_runs), "sighups": sighups,
            "reloads_logged": text.count("reloaded:"),
            "recoveries_logged": text.count("token recovered"),
            "token_calls": {k: v for k, v in faults.counts().items() if v},
            "final": final,
            "log_levels": dict(levels), "exit_status": rc,
            "stop_seconds": round(stop_s, 2), "sanitizer_report": bool(rep),
            "failures": fails,
        })
        report(result, stats, unexpected, rep, text)
        return 1 if fails else 0
    except Interrupted as e:
        log("interrupted (%s): stopping the daemon" % e)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            faults.clear()          # releases any hung token call
        except OSError:
            pass
        if load is not None:
            load.stop.set()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for ch in channels:
            try:
                ch.close()
            except Exception:
                pass
        if errf is not None:
            errf.close()
        if keep:
            log("kept %s (daemon.stderr, token, fault.counts)" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def report(r, stats, unexpected, rep, text):
    out = []
    w = out.append
    w("")
    w("==== p11kms soak report ====")
    w("binary %s (%s), load %.0f s incl. %.0f s warm-up, %d threads on %d "
      "channels, --workers %d" % (r["binary"], "ASan" if r["asan"] else
                                  "no ASan", r["load_seconds"],
                                  r["warmup_seconds"], r["client_threads"],
                                  r["channels"], r["workers"]))
    codes = sorted({k for c in stats.ops.values() for k in c if k != "OK"})
    short = {"CANCELLED": "CANCEL", "DEADLINE_EXCEEDED": "DEADLINE",
             "UNAVAILABLE": "UNAVAIL", "RESOURCE_EXHAUSTED": "EXHAUST",
             "INVALID_ARGUMENT": "INVALID"}
    hdr = "%-22s %8s" % ("op", "served") + "".join(
        " %9s" % short.get(c, c[:9]) for c in codes) + " %8s %8s" % (
        "p50 ms", "p99 ms")
    w(hdr)
    w("-" * len(hdr))
    tot = collections.Counter()
    for op in sorted(stats.ops):
        c = stats.ops[op]
        tot.update(c)
        lat = stats.lat.get(op, [])
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        w("%-22s %8d" % (op, c["OK"]) + "".join(
            " %9d" % c[k] for k in codes) + " %8s %8s" % (
            "%.1f" % (p50 * 1000) if p50 is not None else "-",
            "%.1f" % (p99 * 1000) if p99 is not None else "-"))
    w("-" * len(hdr))
    w("%-22s %8d" % ("total", tot["OK"]) + "".join(
        " %9d" % tot[k] for k in codes))
    w("")
    w("by fault phase (served / failed; the commonest failure):")
    for p, c in stats.phases.items():
        top = stats.phase_reasons[p].most_common(1)
        w("  %-16s %8d / %-7d %s" % (p, c["OK"], c["failed"], (
            "%d %s %s" % (top[0][1], top[0][0][0], top[0][0][1][:70])
            if top else "")))
    w("Status healthz: %s; slowest Status %.1f ms" % (
        dict(stats.health), r["status_max_ms"]))
    w("wrong answers: %d   unexpected statuses: %d" % (
        r["wrong_answers"], r["unexpected_statuses"]))
    for op, phase, what in stats.wrong[:10]:
        w("  WRONG %s (%s): %s" % (op, phase, what))
    seen = collections.Counter()
    for op, phase, code, det in unexpected:
        seen[(op, code, det)] += 1
    for (op, code, det), n in seen.most_common(10):
        w("  UNEXPECTED %dx %s %s: %s" % (n, op, code, det))
    w("failures by reason (top 12 of %d):" % len(stats.reasons))
    for (code, det), n in stats.reasons.most_common(12):
        w("  %7d  %-17s %s" % (n, code, det[:100]))
    rk = r["rss_kib"]
    w("")
    w("RSS KiB: start %s, after warm-up %s, end %s (growth after warm-up "
      "%s, bound %d); VmHWM start %s end %s" % (
          rk["start"], rk["after_warmup"], rk["end"],
          rk["growth_after_warmup"], rk["bound_kib"], r["hwm_kib"]["start"],
          r["hwm_kib"]["end"]))
    w("RSS samples: " + " ".join("%s:%d" % (
        s["t"] if s["at"] == "t" else s["at"], s["VmRSS"])
        for s in r["samples"]))
    w("fds start %s end %s; threads start %s end %s" % (
        r["fds"]["start"], r["fds"]["end"], r["threads"]["start"],
        r["threads"]["end"]))
    w("fault phases run: %s; SIGHUPs %d, reloads logged %d, token recoveries "
      "logged %d" % (r["phases_run"], r["sighups"], r["reloads_logged"],
                     r["recoveries_logged"]))
    tc = r["token_calls"]
    w("token calls: " + " ".join("%s=%d" % (k, tc.get(k, 0)) for k in (
        "C_Initialize", "C_Finalize", "C_OpenSession", "C_Login",
        "C_Encrypt", "C_Decrypt")))
    f = r["final"]
    if f:
        w("after clearing faults: Status ok after %s s, a round trip after "
          "%s s, steady (%.0f s clean) after %s s" % (
              f.get("status_ok_after_s"), f.get("serving_after_s"),
              SETTLE_CLEAN, f.get("settled_after_s")))
        if f.get("settle_failures"):
            w("  while settling: %d failed checks with Status 'ok'; "
              "failures %s" % (f.get("settle_failures_while_status_ok"),
                               f.get("settle_failures")))
        w("then %s calls, %s served, failed %s; %s kept ciphertexts "
          "re-opened" % (f.get("calls"), f.get("served"), f.get("failed"),
                         f.get("kept_ciphertexts_checked")))
        if f.get("connections") is not None:
            c = f["connections"]
            w("connections held by the daemon at the end: %d (client end "
              "in this process: %d, client end closed: %d)" % (
                  c["daemon"], c["client_here"], len(c["orphaned"])))
        if "metrics" in f:
            w("idle gauges: %s" % f["metrics"])
            w("server-side requests by code: %s" %
              f.get("server_requests_by_code"))
    w("daemon log levels: %s" % r["log_levels"])
    w("exit status %s after SIGTERM (%.1f s); sanitizer report: %s" % (
        r["exit_status"], r["stop_seconds"], "YES" if rep else "none"))
    if rep:
        w("---- sanitizer report ----")
        w(rep)
    if r["exit_status"] not in (0, None) or r["failures"]:
        w("---- daemon stderr (tail) ----")
        w(text[-3000:])
    w("RESULT: %s" % ("PASS" if not r["failures"] else
                      "FAIL: " + "; ".join(r["failures"])))
    j = dict(r)
    j.pop("samples")
    j["rss_samples"] = [[s["t"], s["VmRSS"], s["VmHWM"], s["fds"],
                         s["Threads"]] for s in r["samples"]]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.write("SOAK_JSON %s\n" % json.dumps(j, sort_keys=True))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
