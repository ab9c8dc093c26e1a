"""KMS v1beta1 beside v2, the keyring and rotation with SIGHUP reloads.

Every daemon here reads a --config file, so a reload (SIGHUP) re-reads it;
each test walks part of the operator's rotation runbook on a real SoftHSM
token with python3-grpcio as the client.
"""

import os
import signal
import subprocess
import sys
import tempfile
import shutil
import time

import grpc
import pytest

from conftest import REPO, MODULE, make_token, RPC_TIMEOUT

_V1 = None


@pytest.fixture(scope="module", autouse=True)
def _v1_stubs_cleanup():
    yield
    if _V1 is not None:
        shutil.rmtree(_V1[2], ignore_errors=True)


def v1_stubs():
    """kms_v1beta1 python stubs, generated once into a temp dir."""
    global _V1
    if _V1 is None:
        out = tempfile.mkdtemp(prefix="p11kms-v1stubs-")
        r = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc",
             "-I" + os.path.join(REPO, "proto"), "--python_out=" + out,
             "--grpc_python_out=" + out,
             os.path.join(REPO, "proto", "kms_v1beta1.proto")],
            capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        sys.path.insert(0, out)
        import kms_v1beta1_pb2
        import kms_v1beta1_pb2_grpc
        _V1 = (kms_v1beta1_pb2, kms_v1beta1_pb2_grpc, out)
    return _V1[:2]


def write_config(path, token, keys, pin_file=None, extra=""):
    lines = ["# written by test_rotation.py",
             "module = %s" % MODULE,
             "pin-file = %s" % (pin_file or token.pin_file)]
    lines += ["key = %s" % token.uri(k) for k in keys]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + extra)


class Both:
    """v2 and v1beta1 stubs on one channel (one connection)."""

    def __init__(self, daemon, pb):
        self.ch = daemon.channel()
        self.pb2, pb2_grpc = pb
        self.v1pb, v1grpc = v1_stubs()
        self.v2 = pb2_grpc.KeyManagementServiceStub(self.ch)
        self.v1 = v1grpc.KeyManagementServiceStub(self.ch)

    def status(self):
        return self.v2.Status(self.pb2.StatusRequest(), timeout=RPC_TIMEOUT)

    def enc2(self, pt):
        return self.v2.Encrypt(self.pb2.EncryptRequest(plaintext=pt, uid="t"),
                               timeout=RPC_TIMEOUT)

    def dec2(self, r):
        return self.v2.Decrypt(self.pb2.DecryptRequest(
            ciphertext=r.ciphertext, key_id=r.key_id,
            annotations=dict(r.annotations), uid="t"),
            timeout=RPC_TIMEOUT).plaintext

    def enc1(self, pt):
        return self.v1.Encrypt(self.v1pb.EncryptRequest(version="v1beta1",
                                                        plain=pt),
                               timeout=RPC_TIMEOUT).cipher

    def dec1(self, ct):
        return self.v1.Decrypt(self.v1pb.DecryptRequest(version="v1beta1",
                                                        cipher=ct),
                               timeout=RPC_TIMEOUT).plain

    def close(self):
        self.ch.close()


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def reload_and_wait(daemon, marker):
    """SIGHUP, then wait until the log shows the reload's outcome."""
    before = daemon.stderr().count(marker)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.stderr().count(marker) > before,
             "'%s' in the log after SIGHUP" % marker)


@pytest.fixture
def cfgd(tmp_path, spawn, pb):
    """A token with k1, a config [k1], and a daemon reading it."""
    tok = make_token(os.path.join(str(tmp_path), "tok"), label="k1", key_id="01")
    conf = os.path.join(str(tmp_path), "p11kms.conf")
    write_config(conf, tok, ["k1"])
    sock = os.path.join(str(tmp_path), "kms.sock")
    d = spawn(tok, socket_=sock, args=["--config", conf, "--socket", sock,
                                       "--probe-interval", "1"])
    c = Both(d, pb)
    yield tok, conf, d, c
    c.close()


def test_v1_version(cfgd):
    _, _, _, c = cfgd
    v1pb, _ = v1_stubs()
    r = c.v1.Version(v1pb.VersionRequest(version="v1beta1"), timeout=RPC_TIMEOUT)
    assert r.version == "v1beta1"
    assert r.runtime_name == "p11kms"
    assert r.runtime_version and r.runtime_version[0].isdigit()


@pytest.mark.parametrize("method", ["Version", "Encrypt", "Decrypt"])
def test_v1_wrong_version_refused(cfgd, method):
    _, _, _, c = cfgd
    v1pb, _ = v1_stubs()
    req = {"Version": v1pb.VersionRequest(version="v2"),
           "Encrypt": v1pb.EncryptRequest(version="v2", plain=b"x" * 32),
           "Decrypt": v1pb.DecryptRequest(version="v1", cipher=b"x" * 40)}
    with pytest.raises(grpc.RpcError) as e:
        getattr(c.v1, method)(req[method], timeout=RPC_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "v1beta1" in e.value.details()


def test_v1_round_trip_and_side_by_side(cfgd):
    """v1 and v2 on one socket and one connection; each sealed DEK opens
    through the other API too, since the envelope names its key."""
    _, _, d, c = cfgd
    dek = os.urandom(32)
    ct1 = c.enc1(dek)
    assert 0 < len(ct1) <= 1024
    assert c.dec1(ct1) == dek
    r2 = c.enc2(dek)
    assert c.dec2(r2) == dek
    assert c.dec1(r2.ciphertext) == dek          # v2 envelope through v1
    pb2 = c.pb2
    out = c.v2.Decrypt(pb2.DecryptRequest(
        ciphertext=ct1, key_id=c.status().key_id,
        annotations=dict(r2.annotations)), timeout=RPC_TIMEOUT).plaintext
    assert out == dek                            # v1 envelope through v2
    assert c.enc1(dek) != ct1                    # fresh IV every time


def test_v1_tampered_and_empty(cfgd):
    _, _, _, c = cfgd
    ct = bytearray(c.enc1(os.urandom(32)))
    for i in (0, 1, 5, 20, len(ct) - 1):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(grpc.RpcError) as e:
            c.dec1(bytes(bad))
        assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.NOT_FOUND), i
    for bad in (b"", b"\x01"):
        with pytest.raises(grpc.RpcError) as e:
            c.dec1(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_v1_concurrent(cfgd):
    _, _, _, c = cfgd
    deks = [os.urandom(32) for _ in range(100)]
    futs = [c.v1.Encrypt.future(c.v1pb.EncryptRequest(version="v1beta1",
                                                      plain=p),
                                timeout=RPC_TIMEOUT) for p in deks]
    cts = [f.result().cipher for f in futs]
    futs = [c.v1.Decrypt.future(c.v1pb.DecryptRequest(version="v1beta1",
                                                      cipher=ct),
                                timeout=RPC_TIMEOUT) for ct in cts]
    assert [f.result().plain for f in futs] == deks


def test_rotation_story(cfgd):
    """The whole runbook: encrypt under k1; generate k2; config [k2, k1];
    reload; old ciphertexts (v1 and v2) still decrypt; new ones carry k2's
    key_id; config [k2]; reload; k1 ciphertexts fail with an error naming
    the key_id; k2 ones work. The connection is never dropped."""
    tok, conf, d, c = cfgd
    k1 = c.status().key_id
    dek = os.urandom(32)
    old2 = c.enc2(dek)
    old1 = c.enc1(dek)
    assert old2.key_id == k1

    make_token(tok.dir, label="k2", key_id="02", add_key_only=True)
    write_config(conf, tok, ["k2", "k1"])
    reload_and_wait(d, "reloaded:")
    k2 = c.status().key_id
    assert k2 != k1 and len(k2) == 32
    assert c.status().healthz == "ok"
    new2 = c.enc2(dek)
    assert new2.key_id == k2
    new1 = c.enc1(dek)
    assert c.dec2(old2) == dek and c.dec1(old1) == dek
    assert c.dec2(new2) == dek and c.dec1(new1) == dek

    write_config(conf, tok, ["k2"])
    reload_and_wait(d, "reloaded:")
    assert c.status().key_id == k2
    with pytest.raises(grpc.RpcError) as e:
        c.dec2(old2)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert k1 in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        c.dec1(old1)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert k1 in e.value.details()
    assert c.dec2(new2) == dek and c.dec1(new1) == dek
    assert d.alive()
    assert "reload failed" not in d.stderr()


def _bad_reload(cfgd, mutate, why):
    tok, conf, d, c = cfgd
    k1 = c.status().key_id
    dek = os.urandom(32)
    r = c.enc2(dek)
    mutate(tok, conf)
    reload_and_wait(d, "reload failed")
    log = d.stderr()
    assert why in log.split("reload failed")[-1], log[-2000:]
    # The old configuration still serves, on the same connection.
    assert d.alive()
    st = c.status()
    assert st.key_id == k1 and st.healthz == "ok"
    assert c.dec2(r) == dek
    assert c.dec2(c.enc2(dek)) == dek
    assert c.dec1(c.enc1(dek)) == dek


def test_bad_reload_missing_key(cfgd):
    def mutate(tok, conf):
        write_config(conf, tok, ["nosuchkey", "k1"])
    _bad_reload(cfgd, mutate, "nosuchkey")


def test_bad_reload_extractable_key(cfgd):
    def mutate(tok, conf):
        make_token(tok.dir, label="kx", key_id="09", extractable=True,
                   add_key_only=True)
        write_config(conf, tok, ["kx", "k1"])
    _bad_reload(cfgd, mutate, "extractable")


def test_bad_reload_unreadable_pin_file(cfgd):
    def mutate(tok, conf):
        write_config(conf, tok, ["k1"], pin_file=tok.pin_file + ".missing")
    _bad_reload(cfgd, mutate, "pin")


def test_bad_reload_syntax_error(cfgd):
    def mutate(tok, conf):
        with open(conf, "a") as f:
            f.write("this line has no equals sign\n")
    _bad_reload(cfgd, mutate, "expected")


def test_bad_reload_then_good_reload(cfgd):
    """After a failed reload the next good one applies."""
    tok, conf, d, c = cfgd
    k1 = c.status().key_id
    with open(conf, "a") as f:
        f.write("bogus-option = 1\n")
    reload_and_wait(d, "reload failed")
    assert c.status().key_id == k1
    make_token(tok.dir, label="k2", key_id="02", add_key_only=True)
    write_config(conf, tok, ["k2", "k1"])
    reload_and_wait(d, "reloaded:")
    assert c.status().key_id != k1


def test_in_flight_calls_survive_reload(cfgd):
    """Calls queued while a reload swaps the keyring all get answers."""
    tok, conf, d, c = cfgd
    make_token(tok.dir, label="k2", key_id="02", add_key_only=True)
    write_config(conf, tok, ["k2", "k1"])
    deks = [os.urandom(32) for _ in range(300)]
    futs = [c.v2.Encrypt.future(c.pb2.EncryptRequest(plaintext=p),
                                timeout=RPC_TIMEOUT) for p in deks[:150]]
    d.proc.send_signal(signal.SIGHUP)
    futs += [c.v2.Encrypt.future(c.pb2.EncryptRequest(plaintext=p),
                                 timeout=RPC_TIMEOUT) for p in deks[150:]]
    rs = [f.result() for f in futs]
    wait_for(lambda: "reloaded:" in d.stderr(), "the reload")
    assert [c.dec2(r) for r in rs] == deks


def test_kms_version_fixed_across_reload(tmp_path, spawn, pb):
    """Status.version must never change while running."""
    tok = make_token(os.path.join(str(tmp_path), "tok"), label="k1")
    conf = os.path.join(str(tmp_path), "p11kms.conf")
    write_config(conf, tok, ["k1"], extra="kms-version = v2beta1\n")
    sock = os.path.join(str(tmp_path), "kms.sock")
    d = spawn(tok, socket_=sock, args=["--config", conf, "--socket", sock])
    c = Both(d, pb)
    try:
        assert c.status().version == "v2beta1"
        write_config(conf, tok, ["k1"], extra="kms-version = v2\n")
        reload_and_wait(d, "reloaded:")
        assert c.status().version == "v2beta1"
        assert "kms-version must not change" in d.stderr()
    finally:
        c.close()
