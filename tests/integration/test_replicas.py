"""One KEK on several tokens (replicas): the real daemon on two SoftHSM
tokens that hold copies of one AES-256 KEK, imported into both as
sensitive and non-extractable; the fault module (tests/faultmod) sits in
front of replica A (on a copy of SoftHSM's .so, so that replica B, reached
through SoftHSM itself, is a separate module instance in the same process).

What the daemon must do (issue 14):
  - load every replica, judge each as a lone token (an extractable copy is
    refused), prove they are one key (same key_id, and what each seals the
    other opens: two tokens whose keys merely share label and CKA_ID are
    refused, naming both);
  - spread requests over the replicas; a token fault on one costs no
    request (each is retried once on the other), Status stays "ok", the
    ops endpoint names the replica that is down, p11kms_token_up{token=}
    follows; the replica comes back by itself within a probe interval;
  - a request whose Decrypt tag fails is not retried;
  - a hung replica costs its requests at most one retry and never stalls
    Status;
  - all of it with --token-process on (default) and off.
Speed figures (throughput during an outage) come from the bench
(`p11kms-bench --only replicas`), not from here.
"""

import os
import threading
import time

import grpc
import pytest

from conftest import (MODULE, Daemon, fault_so, free_port, http,
                      make_replica_tokens, parse_metrics, round_trip,
                      rpc_error, run_p11kms)
from faultctl import FAULT_SO

C = grpc.StatusCode
PROBE = 1                 # --probe-interval (seconds)
TIMEOUT_MS = 400          # --replica-timeout
MODES = ["on", "off"]     # --token-process


class ReplicaEnv:
    """What a daemon on replica tokens needs in its environment: SoftHSM's
    config and the fault module's files (rules apply to replica A)."""

    def __init__(self, rt, faults, target):
        self.rt, self.faults, self.target = rt, faults, target

    def env(self):
        e = self.rt.env()
        e["P11KMS_FAULT_CONTROL"] = self.faults.control
        e["P11KMS_FAULT_COUNTS"] = self.faults.counts_path
        e["P11KMS_FAULT_TARGET"] = self.target
        return e


@pytest.fixture
def faults(faults):
    """The suite's fault files, without the GCM IV emulation prefix (the
    fault module here fronts one replica only, so both must agree on IVs:
    the default form)."""
    faults.prefix = ""
    faults.clear()
    return faults


@pytest.fixture
def rt(tmp_path):
    return make_replica_tokens(os.path.join(str(tmp_path), "toks"))


def replica_args(rt, sock, mode, a="kms-a", b="kms-b", extra=(),
                 faulty=True, keys=("kek1",)):
    """-k for replica A (the fault module in front), --replica for B."""
    args = ["-s", sock]
    for k in keys:
        args += ["-k", rt.uri(a, k), "--replica", rt.uri(b, k)]
        if k == keys[0]:
            args += ["--replica-pin-file", rt.pin_files[b],
                     "--replica-module", MODULE]
    args += ["-m", FAULT_SO if faulty else MODULE, "-p", rt.pin_files[a],
             "--probe-interval", str(PROBE), "--workers", "2",
             "--replica-timeout", str(TIMEOUT_MS),
             "--token-process=%s" % mode] + list(extra)
    return args


@pytest.fixture
def rdaemon(tmp_path, pb, rt, faults, client_for):
    """Factory: a daemon on replicas A (faulty) and B, its ops port, a
    Client. Stopped by PID at teardown (rules emptied first by faults)."""
    made = []

    def _start(mode="on", extra=(), name="d"):
        wd = os.path.join(str(tmp_path), name)
        port = free_port()
        env = ReplicaEnv(rt, faults, rt.module_copy())
        d = Daemon(env, wd, args=replica_args(
            rt, os.path.join(wd, "kms.sock"), mode,
            extra=["--ops-listen", "127.0.0.1:%d" % port] + list(extra)))
        made.append(d)
        d.start(pb)
        return d, port, client_for(d)
    yield _start
    faults.clear()
    for d in made:
        print("---- %s stderr (tail) ----\n%s" % (d.workdir,
                                                   d.stderr()[-3000:]))
        d.kill_quietly()


def status_lines(port):
    code, _, body = http(port, "/status")
    assert code == 200
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out


def metrics(port):
    code, _, body = http(port, "/metrics")
    assert code == 200
    return parse_metrics(body)


def wait_for(cond, timeout, what):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("%s: not within %.1f s" % (what, timeout))


class Load:
    """Threads doing Encrypt+Decrypt round trips, each on its own channel,
    and one polling Status; every failure and every Status other than "ok"
    is kept."""

    def __init__(self, daemon, client_for, threads=6, rpc_timeout=5.0):
        self.stop = threading.Event()
        self.failures, self.bad_status, self.lat = [], [], []
        self.ok = 0
        self.status_max = 0.0
        self.lock = threading.Lock()
        self.clients = [client_for(daemon) for _ in range(threads + 1)]
        self.timeout = rpc_timeout
        self.ts = [threading.Thread(target=self.work, args=(c,))
                   for c in self.clients[1:]]
        self.ts.append(threading.Thread(target=self.poll,
                                        args=(self.clients[0],)))

    def work(self, c):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                round_trip(c, timeout=self.timeout)
                with self.lock:
                    self.ok += 1
                    self.lat.append(time.monotonic() - t0)
            except (grpc.RpcError, AssertionError) as e:
                with self.lock:
                    self.failures.append(
                        "%s %s" % (e.code(), e.details())
                        if isinstance(e, grpc.RpcError) else repr(e))

    def poll(self, c):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                h = c.status(timeout=5).healthz
            except grpc.RpcError as e:
                h = "Status failed: %s" % e.code()
            dt = time.monotonic() - t0
            with self.lock:
                self.status_max = max(self.status_max, dt)
                if h != "ok":
                    self.bad_status.append(h)
            time.sleep(0.02)

    def __enter__(self):
        for t in self.ts:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.ts:
            t.join(30)

    def count(self):
        with self.lock:
            return self.ok


# --------------------------------------------------------------------------
# loading: one key, proven


@pytest.mark.parametrize("mode", MODES)
def test_replicas_serve_and_share(rdaemon, faults, client_for, mode):
    d, port, c = rdaemon(mode)
    for _ in range(20):
        round_trip(c)
    st = status_lines(port)
    assert st["replicas"] == "2"
    assert st["replica_1"] == "kms-a up" and st["replica_2"] == "kms-b up"
    assert st["health"] == "ok" and st["token"] == "up"
    m = metrics(port)
    assert m['p11kms_token_up{token="kms-a"}'] == 1
    assert m['p11kms_token_up{token="kms-b"}'] == 1
    # The start-up log names both replicas and their one key_id.
    err = d.stderr()
    assert "replica 1: token 'kms-a'" in err and \
        "replica 2: token 'kms-b'" in err
    assert "2 replicas x 2" in err
    # least-busy spreads concurrent load: replica A (behind the fault
    # module, which counts its calls) takes part of it, not all or none.
    before = faults.count("C_Encrypt")
    with Load(d, client_for, threads=6) as ld:
        wait_for(lambda: ld.count() >= 300, 60, "300 round trips")
    a = faults.count("C_Encrypt") - before
    assert not ld.failures, ld.failures[:5]
    assert 0 < a < ld.count(), "replica A sealed %d of %d" % (a, ld.count())


def test_primary_first_keeps_replica_b_idle(rdaemon, faults):
    d, port, c = rdaemon(extra=["--replica-policy", "primary-first"])
    before = faults.count("C_Encrypt")
    for _ in range(30):
        round_trip(c)
    # Every seal on A (probes of A add theirs).
    assert faults.count("C_Encrypt") - before >= 30


def test_cross_check_refuses_lookalike_keys(tmp_path, faults):
    """Two tokens whose keys share label and CKA_ID but not the value."""
    rt = make_replica_tokens(os.path.join(str(tmp_path), "toks"), same=False)
    env = ReplicaEnv(rt, faults, rt.module_copy())
    r = run_p11kms(replica_args(rt, str(tmp_path / "kms.sock"), "on"),
                   env=env.env())
    assert r.returncode == 2, r.stderr
    assert "replica 1 (token 'kms-a'" in r.stderr
    assert "replica 2 (token 'kms-b'" in r.stderr
    assert "do not hold the same key" in r.stderr
    assert not os.path.exists(str(tmp_path / "kms.sock"))


def test_extractable_replica_refused(tmp_path, faults):
    rt = make_replica_tokens(os.path.join(str(tmp_path), "toks"),
                             extractable=("kms-b",))
    env = ReplicaEnv(rt, faults, rt.module_copy())
    r = run_p11kms(replica_args(rt, str(tmp_path / "kms.sock"), "on"),
                   env=env.env())
    assert r.returncode == 2, r.stderr
    assert "replica 2 (pkcs11:token=kms-b" in r.stderr
    assert "extractable" in r.stderr.lower()


def test_two_keys_on_two_replicas(tmp_path, pb, faults, client_for):
    """Rotation with replicas: every key has a replica line per token."""
    base = os.path.join(str(tmp_path), "toks")
    rt = make_replica_tokens(base)
    make_replica_tokens(base, label="kek2", key_id="02")
    env = ReplicaEnv(rt, faults, rt.module_copy())
    wd = str(tmp_path / "d")
    d = Daemon(env, wd, args=replica_args(rt, os.path.join(wd, "kms.sock"),
                                          "on", keys=("kek2", "kek1")))
    try:
        d.start(pb)
        c = client_for(d)
        e = round_trip(c)
        assert e.key_id == c.status().key_id
    finally:
        d.kill_quietly()


def test_replica_config_errors(tmp_path, rt):
    sock = str(tmp_path / "kms.sock")
    # Key 2 without a replica line while key 1 has one.
    r = run_p11kms(["-s", sock, "-k", rt.uri("kms-a"), "--replica",
                    rt.uri("kms-b"), "-k", rt.uri("kms-a", "kek0"), "-p",
                    rt.pin_files["kms-a"]], env=rt.env())
    assert r.returncode == 2
    assert "key 2" in r.stderr and "replica" in r.stderr
    # A replica before any key.
    r = run_p11kms(["-s", sock, "--replica", rt.uri("kms-b"), "-k",
                    rt.uri("kms-a"), "-p", rt.pin_files["kms-a"]],
                   env=rt.env())
    assert r.returncode == 2 and "comes before any key" in r.stderr
    # A PIN file for no replica.
    r = run_p11kms(["-s", sock, "-k", rt.uri("kms-a"), "--replica-pin-file",
                    rt.pin_files["kms-b"], "-p", rt.pin_files["kms-a"]],
                   env=rt.env())
    assert r.returncode == 2 and "replica-pin-file" in r.stderr
    r = run_p11kms(["--replica-policy", "random"], env=rt.env())
    assert r.returncode == 2 and "least-busy or primary-first" in r.stderr
    # The wrong PIN for replica B is refused naming replica 2.
    bad = str(tmp_path / "bad.pin")
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"0000\n")
    os.close(fd)
    r = run_p11kms(["-s", sock, "-k", rt.uri("kms-a"), "-p",
                    rt.pin_files["kms-a"], "--replica", rt.uri("kms-b"),
                    "--replica-pin-file", bad], env=rt.env())
    assert r.returncode == 2 and "replica 2" in r.stderr, r.stderr


# --------------------------------------------------------------------------
# faults


@pytest.mark.parametrize("mode", MODES)
def test_device_removed_costs_no_request(rdaemon, faults, client_for, mode):
    d, port, c = rdaemon(mode)
    with Load(d, client_for) as ld:
        wait_for(lambda: ld.count() >= 50, 30, "load running")
        faults.set("* CKR_DEVICE_REMOVED\n")
        st = wait_for(lambda: (lambda s: s if s["replica_1"] ==
                                "kms-a down" else None)(status_lines(port)),
                      10, "replica A down in /status")
        assert st["health"].startswith("degraded: replica 'kms-a' down")
        assert "CKR_DEVICE_REMOVED" in st["health"]
        assert st["replica_2"] == "kms-b up" and st["healthz"] == "ok"
        code, _, body = http(port, "/healthz")
        assert code == 200 and "kms-a" in body, body
        assert metrics(port)['p11kms_token_up{token="kms-a"}'] == 0
        assert metrics(port)['p11kms_token_up{token="kms-b"}'] == 1
        n = ld.count()
        wait_for(lambda: ld.count() >= n + 100, 30, "serving on B alone")
        faults.clear()
        t0 = time.monotonic()
        wait_for(lambda: status_lines(port)["replica_1"] == "kms-a up",
                 PROBE + 3, "replica A back")
        back = time.monotonic() - t0
        before = faults.count("C_Encrypt")
        n = ld.count()
        wait_for(lambda: ld.count() >= n + 100, 30, "serving on both")
        assert faults.count("C_Encrypt") > before, "A takes load again"
    assert not ld.failures, ld.failures[:5]
    assert not ld.bad_status, ld.bad_status[:5]
    assert back <= PROBE + 3
    assert "replica 'kms-a' unhealthy" in d.stderr()
    assert "replica 'kms-a' healthy" in d.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_request_retried_once_on_other_replica(rdaemon, faults, mode):
    """A seal that fails on A with a token fault is answered from B."""
    d, port, c = rdaemon(mode, extra=["--replica-policy", "primary-first"])
    round_trip(c)
    faults.set("C_Encrypt CKR_DEVICE_REMOVED 1\n")
    pt = os.urandom(32)
    e = c.encrypt(pt)               # A fails, B answers
    assert c.decrypt(e.ciphertext, e.key_id, e.annotations).plaintext == pt
    wait_for(lambda: "replica 'kms-a' unhealthy" in d.stderr(), 5,
             "A reported down")
    assert "C_Encrypt: CKR_DEVICE_REMOVED" in d.stderr()


def test_tag_failure_is_not_retried(rdaemon, faults):
    d, port, c = rdaemon()
    e = round_trip(c)
    ct = bytearray(e.ciphertext)
    ct[-1] ^= 1
    key = 'p11kms_pkcs11_call_duration_seconds_count{function="C_Decrypt",' \
        'rv="CKR_GENERAL_ERROR"}'
    before = metrics(port).get(key, 0)
    for _ in range(6):
        err = rpc_error(c.decrypt, bytes(ct), e.key_id, e.annotations)
        assert err.code() == C.INVALID_ARGUMENT
    # One C_Decrypt per request, on whichever replica took it.
    assert metrics(port).get(key, 0) - before == 6
    st = status_lines(port)
    assert st["replica_1"] == "kms-a up" and st["replica_2"] == "kms-b up"


def quiet_calls(faults, fn, quiet=0.5, timeout=15.0):
    """Waits until the module has seen no fn call for quiet seconds."""
    last, since = faults.count(fn), time.time()
    until = since + timeout
    while time.time() < until:
        time.sleep(0.05)
        n = faults.count(fn)
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= quiet:
            return n
    raise AssertionError("%s calls never stopped" % fn)


def test_both_replicas_failing_costs_two_tries(tmp_path, pb, faults,
                                               client_for):
    """Both replicas behind the fault module: a request that fails on one
    runs once more on the other, and no third time."""
    rt = make_replica_tokens(os.path.join(str(tmp_path), "toks"))
    env = ReplicaEnv(rt, faults, rt.module_copy())
    wd = str(tmp_path / "d")
    args = replica_args(rt, os.path.join(wd, "kms.sock"), "on")
    args[args.index(MODULE)] = FAULT_SO        # B behind it too
    args += ["--probe-interval", "60"]          # no probe in between
    d = Daemon(env, wd, args=args)
    try:
        d.start(pb)
        c = client_for(d)
        round_trip(c)
        # The start-up probes of each replica end first: one that landed
        # between the two counts below would look like a third try.
        quiet_calls(faults, "C_Encrypt")
        faults.set("C_Encrypt CKR_DEVICE_REMOVED\n")
        before = faults.count("C_Encrypt")
        t0 = time.monotonic()
        err = rpc_error(c.encrypt, os.urandom(32))
        assert err.code() == C.UNAVAILABLE
        # The health module probes the replica a request failed on at
        # once (health_job): one more seal, sent when the answer came back,
        # so it may or may not be in a count taken right away. Count when
        # the calls have settled instead, before the keyring is reopened
        # (1 s after every replica went down, another seal).
        while time.monotonic() - t0 < 0.5:
            time.sleep(0.05)
        tries = faults.count("C_Encrypt") - before
        assert tries == 2 + 1 or time.monotonic() - t0 > 0.95, \
            (tries, d.stderr()[-2000:])
    finally:
        faults.clear()
        d.kill_quietly()


@pytest.mark.parametrize("mode", MODES)
def test_hung_replica_costs_one_retry(rdaemon, faults, client_for, mode):
    d, port, c = rdaemon(mode)
    round_trip(c)
    with Load(d, client_for, threads=4) as ld:
        wait_for(lambda: ld.count() >= 20, 30, "load running")
        faults.set("C_Encrypt hang\nC_Decrypt hang\n")
        st = wait_for(lambda: (lambda s: s if s["replica_1"] ==
                                "kms-a down" else None)(status_lines(port)),
                      10, "replica A down in /status")
        assert "hung" in st["health"], st
        n = ld.count()
        wait_for(lambda: ld.count() >= n + 100, 30, "serving past the hang")
        assert status_lines(port)["replica_1"] == "kms-a down"
        with ld.lock:
            lat = list(ld.lat)
        faults.clear()
        wait_for(lambda: status_lines(port)["replica_1"] == "kms-a up",
                 PROBE + 5, "replica A back after the hang")
    assert not ld.failures, ld.failures[:5]
    assert not ld.bad_status, ld.bad_status[:5]
    # A round trip is two requests; each may wait out one hang on A
    # before it runs on B, never more.
    assert max(lat) < 2 * (TIMEOUT_MS / 1000.0) + 1.5, max(lat)
    assert ld.status_max < 1.0, ld.status_max


def test_selftest_checks_every_replica(tmp_path, rt):
    args = ["selftest", "-k", rt.uri("kms-a"), "-m", MODULE, "-p",
            rt.pin_files["kms-a"], "--replica", rt.uri("kms-b"),
            "--replica-pin-file", rt.pin_files["kms-b"]]
    r = run_p11kms(args, env=rt.env())
    assert r.returncode == 0, r.stderr
    assert "replica 2 key 0" in r.stdout and "OK" in r.stdout
    assert "one key on 2 tokens" in r.stdout
    bad = make_replica_tokens(os.path.join(str(tmp_path), "bad"), same=False)
    args = ["selftest", "-k", bad.uri("kms-a"), "-m", MODULE, "-p",
            bad.pin_files["kms-a"], "--replica", bad.uri("kms-b"),
            "--replica-pin-file", bad.pin_files["kms-b"]]
    r = run_p11kms(args, env=bad.env())
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "NOT READY" in r.stderr and "do not hold the same key" in r.stderr


def test_keygen_import_makes_replicas(tmp_path, pb, faults, client_for):
    """p11kms keygen --import: one value into two tokens, which then
    serve as replicas; the value file's mode and size are checked."""
    base = os.path.join(str(tmp_path), "toks")
    rt = make_replica_tokens(base)          # kek1 on both; add kek2
    kf = str(tmp_path / "kek2.bin")
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    ids = set()
    for n in rt.names:
        r = run_p11kms(["keygen", "-m", MODULE, "-p", rt.pin_files[n],
                        "--import", kf, "pkcs11:token=%s;object=kek2;id=%%02"
                        % n], env=rt.env())
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("imported ")
        ids.add([l.split()[1] for l in r.stdout.splitlines()
                 if l.startswith("key_id ")][0])
    assert len(ids) == 1, ids
    # Refusals: no id=, a file others can read, a short file, RSA.
    r = run_p11kms(["keygen", "-m", MODULE, "-p", rt.pin_files["kms-a"],
                    "--import", kf, "pkcs11:token=kms-a;object=kek3"],
                   env=rt.env())
    assert r.returncode == 2 and "needs id=" in r.stderr
    os.chmod(kf, 0o644)
    r = run_p11kms(["keygen", "-m", MODULE, "-p", rt.pin_files["kms-a"],
                    "--import", kf, "pkcs11:token=kms-a;object=kek3;id=%03"],
                   env=rt.env())
    assert r.returncode == 2 and "others can read it" in r.stderr
    os.chmod(kf, 0o600)
    with open(kf, "r+b") as f:
        f.truncate(16)
    r = run_p11kms(["keygen", "-m", MODULE, "-p", rt.pin_files["kms-a"],
                    "--import", kf, "pkcs11:token=kms-a;object=kek3;id=%03"],
                   env=rt.env())
    assert r.returncode == 2 and "exactly 32 raw bytes" in r.stderr
    r = run_p11kms(["keygen", "-m", MODULE, "-p", rt.pin_files["kms-a"],
                    "--type", "rsa", "--import", kf,
                    "pkcs11:token=kms-a;object=kek3"], env=rt.env())
    assert r.returncode == 2 and "for AES keys" in r.stderr
    os.unlink(kf)
    # The imported key serves as a replicated KEK.
    env = ReplicaEnv(rt, faults, rt.module_copy())
    wd = str(tmp_path / "d")
    d = Daemon(env, wd, args=replica_args(rt, os.path.join(wd, "kms.sock"),
                                          "on", keys=("kek2",)))
    try:
        d.start(pb)
        c = client_for(d)
        assert round_trip(c).key_id == ids.pop()
    finally:
        d.kill_quietly()
