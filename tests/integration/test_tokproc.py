"""The token in its own process (--token-process=on, the default).

The front (network side) never maps the PKCS#11 module, runs under a
seccomp allowlist that kills it on open/execve, and survives its token
process: calls in flight get UNAVAILABLE, Status says why, readiness goes
off and a new token process comes up, except after a refused PIN. The
front's death takes the token process along. A reload starts a new token
process and swaps when it is ready, which fixes two reload bugs of the
in-process design (a wrong PIN file "succeeding", a read-only SoftHSM token
directory failing every reload).
"""

import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from conftest import RPC_TIMEOUT, TOKEN_PROCESS
from opsclient import free_port, http, wait_ops

SIGSYS = getattr(signal, "SIGSYS", 31)

# These test the token process itself: not under P11KMS_TEST_TOKEN_PROCESS=off.
pytestmark = pytest.mark.skipif(not TOKEN_PROCESS,
                                reason="daemons run with --token-process=off")


def ppid_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def state_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2]


def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and ppid_of(int(name)) == pid:
            out.append(int(name))
    return out


def token_processes(front):
    """(spawner, [live token processes]) below the front."""
    spawners = [p for p in children(front) if state_of(p) not in (None, "Z")]
    assert len(spawners) == 1, "spawner below %d: %r" % (front, spawners)
    toks = [p for p in children(spawners[0]) if state_of(p) not in (None, "Z")]
    return spawners[0], toks


def one_token_process(front, timeout=10.0):
    until = time.time() + timeout
    while True:
        _, toks = token_processes(front)
        if len(toks) == 1:
            return toks[0]
        if time.time() > until:
            raise AssertionError("token processes below %d: %r" % (front, toks))
        time.sleep(0.05)


def maps(pid):
    with open("/proc/%d/maps" % pid) as f:
        return f.read()


def wait_for(cond, what, timeout=10.0):
    until = time.time() + timeout
    while time.time() < until:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def gone(pid):
    return state_of(pid) in (None, "Z")


def test_front_never_maps_the_module(token, spawn, client_for):
    d = spawn(token)
    tok = one_token_process(d.proc.pid)
    assert "libsofthsm2" not in maps(d.proc.pid)
    assert "libsofthsm2" in maps(tok)
    with open("/proc/%d/cmdline" % tok, "rb") as f:
        assert b"__token-process" in f.read()
    # ps and top name it (it is exec'ed as /proc/self/exe).
    with open("/proc/%d/comm" % tok) as f:
        assert f.read().strip() == "p11kms-token"
    # No descriptor of the front names the PIN file or the token store.
    fds = "/proc/%d/fd" % d.proc.pid
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
        except OSError:
            continue
        assert target != token.pin_file
        assert not target.startswith(token.dir)
    c = client_for(d)
    pt = os.urandom(32)
    enc = c.encrypt(pt)
    assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations).plaintext == pt
    assert "front sandboxed" in d.stderr()


def test_token_process_off_keeps_one_process(token, spawn, client_for):
    d = spawn(token, extra=["--token-process=off"])
    assert "libsofthsm2" in maps(d.proc.pid)
    assert children(d.proc.pid) == []
    assert "front sandboxed" not in d.stderr()
    c = client_for(d)
    enc = c.encrypt(b"x" * 32)
    assert c.decrypt(enc.ciphertext, enc.key_id,
                     enc.annotations).plaintext == b"x" * 32


@pytest.mark.parametrize("probe", ["open", "execve"])
def test_sandbox_kills_the_front(token, spawn, monkeypatch, probe):
    """A forbidden syscall after set-up kills the front (SIGSYS) and its
    token process follows it."""
    monkeypatch.setenv("P11KMS_TEST_SANDBOX_PROBE", probe)
    d = spawn(token, start=False)
    d.spawn()
    try:
        rc = d.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        if "(sanitizer build)" in d.stderr() and probe == "open":
            pytest.skip("sanitizer builds allow open (LeakSanitizer)")
        raise
    assert "sandbox probe: " + probe in d.stderr(), d.stderr()
    assert rc == -SIGSYS, "exit %s; stderr:\n%s" % (rc, d.stderr())


def test_token_process_death(token, faults, spawn, pb):
    """kill -9 of the token process: the call in flight fails UNAVAILABLE
    naming the fault, Status and readyz say so, and a new token process
    serves again."""
    from faultctl import FAULT_SO, FaultToken
    from conftest import Client, SEAL_CALL

    port = free_port()
    d = spawn(FaultToken(token, faults), module=FAULT_SO,
              extra=["--ops-listen", "127.0.0.1:%d" % port])
    wait_ops(d, port)
    old = one_token_process(d.proc.pid)
    c = Client(d, pb)
    try:
        faults.set("%s delay 5000" % SEAL_CALL)
        fut = c.stub.Encrypt.future(pb[0].EncryptRequest(plaintext=b"k" * 32,
                                                      uid="inflight"),
                                    timeout=RPC_TIMEOUT)
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        err = fut.exception(timeout=RPC_TIMEOUT)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "token process %d" % old in err.details(), err.details()
        st = c.status(timeout=5)
        assert "token process %d" % old in st.healthz, st.healthz
        code, _, body = http(port, "/readyz")
        assert code == 503, body
        faults.clear()
        wait_for(lambda: c.status(timeout=5).healthz == "ok",
                 "a new token process", 15)
        new = one_token_process(d.proc.pid)
        assert new != old
        enc = c.encrypt(b"a" * 32, timeout=5)
        assert c.decrypt(enc.ciphertext, enc.key_id,
                         enc.annotations).plaintext == b"a" * 32
        wait_for(lambda: http(port, "/readyz")[0] == 200, "readyz", 5)
    finally:
        c.close()
    assert "token recovered" in d.stderr()


def test_refused_pin_is_never_retried(token, spawn, client_for):
    d = spawn(token)
    c = client_for(d)
    old = one_token_process(d.proc.pid)
    with open(token.pin_file, "w") as f:
        f.write("999999\n")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: "refused the PIN" in d.stderr(), "the refused PIN", 15)
    time.sleep(4)            # several backoff periods
    err = d.stderr()
    assert err.count("refused the PIN") == 1, err
    _, toks = token_processes(d.proc.pid)
    assert toks == []
    assert "refused the PIN" in c.status(timeout=5).healthz
    # Fixed and SIGHUP: serving again.
    with open(token.pin_file, "w") as f:
        f.write(token.pin + "\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: c.status(timeout=5).healthz == "ok", "serving again", 15)


def test_front_death_leaves_no_orphan(token, spawn):
    d = spawn(token)
    spawner, toks = token_processes(d.proc.pid)
    assert len(toks) == 1
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)
    wait_for(lambda: gone(spawner) and gone(toks[0]),
             "the spawner and the token process to exit", 5)


def test_sigterm_ends_every_process(token, spawn):
    d = spawn(token)
    spawner, toks = token_processes(d.proc.pid)
    assert d.stop() == 0
    wait_for(lambda: gone(spawner) and gone(toks[0]), "no process left", 5)


def test_reload_starts_a_new_token_process(token, spawn, client_for):
    d = spawn(token)
    c = client_for(d)
    enc = c.encrypt(b"r" * 32)
    old = one_token_process(d.proc.pid)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded:" in d.stderr(), "the reload")
    wait_for(lambda: gone(old), "the old token process to exit", 5)
    new = one_token_process(d.proc.pid)
    assert new != old
    assert c.decrypt(enc.ciphertext, enc.key_id,
                     enc.annotations).plaintext == b"r" * 32


def test_reload_with_a_wrong_pin_fails(token, spawn, client_for):
    """In one process the old generation's login made any PIN pass
    (C_Login: CKR_USER_ALREADY_LOGGED_IN); a fresh token process checks
    it, so the reload fails and the old generation keeps serving."""
    d = spawn(token)
    c = client_for(d)
    old = one_token_process(d.proc.pid)
    with open(token.pin_file, "w") as f:
        f.write("999999\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in d.stderr(), "the reload to fail")
    assert "reloaded:" not in d.stderr()
    assert one_token_process(d.proc.pid) == old
    st = c.status(timeout=5)
    assert st.healthz == "ok"
    enc = c.encrypt(b"p" * 32)
    assert c.decrypt(enc.ciphertext, enc.key_id,
                     enc.annotations).plaintext == b"p" * 32


def _ro_daemon(token, spawn, mode):
    """A daemon whose SoftHSM token directory is a read-only bind mount
    (as the kubeadm manifest mounts it), in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only bind mount")
    tokdir = os.path.join(token.dir, "tokens")
    d = spawn(token, start=False, extra=["--token-process=%s" % mode])
    cmd = " ".join("'%s'" % a for a in d.args)
    d.args = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              "mount --bind '%s' '%s' && mount -o remount,ro,bind '%s' '%s'"
              " && exec %s" % (tokdir, tokdir, tokdir, tokdir, cmd)]
    d.start()
    return d


def test_reload_with_a_read_only_token_dir(token, spawn):
    d = _ro_daemon(token, spawn, "on")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded:" in d.stderr() or "reload failed" in
             d.stderr(), "the reload")
    assert "reloaded:" in d.stderr(), d.stderr()


def test_read_only_token_dir_cause_in_one_process(token, spawn):
    """The cause, shown with --token-process=off: a second keyring load
    in a process where the module is still initialized (the serving
    generation holds it) makes SoftHSM re-check its token store, which it
    opens read-write (EROFS on this mount), and the token drops out."""
    d = _ro_daemon(token, spawn, "off")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded:" in d.stderr() or "reload failed" in
             d.stderr(), "the reload")
    assert "none initialized" in d.stderr(), d.stderr()


def test_token_user_runs_the_token_process_as_another_uid(spawn, client_for):
    """--token-user: the token process runs as that user, which owns the
    PIN file and the token store; the front (root here) does not need
    them."""
    import pwd
    import tempfile
    from conftest import make_token

    if os.geteuid() != 0:
        pytest.skip("--token-user needs root")
    nobody = pwd.getpwnam("nobody")
    base = tempfile.mkdtemp(prefix="p11kms-tokuser-")
    try:
        os.chmod(base, 0o755)
        tok = make_token(os.path.join(base, "tok"))
        for root, dirs, files in os.walk(base):
            for n in dirs + files:
                os.chown(os.path.join(root, n), nobody.pw_uid, nobody.pw_gid)
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        d = spawn(tok, extra=["--token-user", "nobody"])
        pid = one_token_process(d.proc.pid)
        with open("/proc/%d/status" % pid) as f:
            uids = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
        assert all(int(u) == nobody.pw_uid for u in uids), uids
        assert os.stat("/proc/%d" % d.proc.pid).st_uid == 0
        c = client_for(d)
        enc = c.encrypt(b"u" * 32)
        assert c.decrypt(enc.ciphertext, enc.key_id,
                         enc.annotations).plaintext == b"u" * 32
        assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
