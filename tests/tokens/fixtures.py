"""Throwaway PKCS#11 tokens for the token matrix (tests/tokens/matrix.py).

Each fixture builds one token in a fresh temporary directory and is a
context manager: __exit__ stops every process it started by PID (SIGTERM, a
bounded wait, then SIGKILL) and removes the directory, also when the body
raised. Every wait is bounded; nothing here can block for long.

All fixtures give the same small interface:
  name, module (path of the .so p11kms loads), token (label), pin_file,
  env() (environment for p11kms and the tools), uri(label, kind),
  tool_key(label, kind): make a key with the token's own tool, sensitive
  and non-extractable, for when `p11kms keygen` cannot.
kind is "aes" (an AES-256 secret key) or "rsa" (an RSA key pair).
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MKTOKEN = os.path.join(REPO, "tests", "mktoken.sh")
STOP_TIMEOUT = 5.0       # seconds between SIGTERM and SIGKILL
TOOL_TIMEOUT = 60.0      # any one set-up command
READY_TIMEOUT = 15.0     # a helper daemon to answer

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


class FixtureError(Exception):
    """Set-up failed; the message says which step and what it printed."""


def multiarch_lib(name):
    """Path of a PKCS#11 module under the multiarch pkcs11 directory."""
    for d in ("/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/aarch64-linux-gnu/pkcs11",
              "/usr/lib/pkcs11", "/usr/lib64/pkcs11"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return os.path.join("/usr/lib/x86_64-linux-gnu/pkcs11", name)


def run(cmd, env=None, what=None, stdin=None, timeout=TOOL_TIMEOUT):
    """Runs a set-up command to completion; FixtureError when it fails or
    outlives timeout (subprocess.run kills it then)."""
    try:
        r = subprocess.run(cmd, env=env, input=stdin, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FixtureError("%s: no answer within %.0f s" % (what or cmd[0], timeout))
    except OSError as e:
        raise FixtureError("%s: %s" % (what or cmd[0], e))
    if r.returncode != 0:
        raise FixtureError("%s failed (%d): %s %s" % (what or cmd[0], r.returncode,
                                                      r.stdout[-1500:], r.stderr[-1500:]))
    return r


def wait_until(pred, what, timeout=READY_TIMEOUT, alive=None):
    """Polls pred every 50 ms; FixtureError after timeout, or as soon as
    alive() (a process check) turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if alive is not None and not alive():
            raise FixtureError("%s: the process exited" % what)
        time.sleep(0.05)
    raise FixtureError("timed out after %.0f s waiting for %s" % (timeout, what))


def free_port_pair():
    """Two consecutive free TCP ports on 127.0.0.1 (swtpm: server, ctrl)."""
    for _ in range(50):
        p = random.randint(20000, 60000)
        socks = []
        try:
            for q in (p, p + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise FixtureError("no free pair of TCP ports")


def write_pin(path, pin):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    os.chmod(path, 0o600)


class Procs:
    """Helper processes of one fixture, stopped by PID in reverse order."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def spawn(self, name, argv, env=None):
        log = open(os.path.join(self.logdir, name + ".log"), "ab")
        try:
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT)
        except OSError as e:
            log.close()
            raise FixtureError("cannot start %s: %s" % (argv[0], e))
        self.procs.append((name, p, log))
        return p

    def log(self, name):
        try:
            with open(os.path.join(self.logdir, name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-2000:]
        except OSError:
            return ""

    def stop_all(self):
        for name, p, log in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    try:
                        p.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
                except ProcessLookupError:
                    pass
            log.close()
        self.procs = []


class Fixture:
    name = "?"
    module = None
    token = "kms"
    pin = "1234"
    kinds_by_tool = ("aes", "rsa")

    def __init__(self, base=None):
        self.dir = tempfile.mkdtemp(prefix="p11kms-%s-" % self.name, dir=base)
        self.pin_file = os.path.join(self.dir, "pin")
        self.procs = Procs(self.dir)
        self._env = dict(os.environ)

    def env(self):
        return dict(self._env)

    def uri(self, label, kind="aes"):
        t = "secret-key" if kind == "aes" else "private"
        return "pkcs11:token=%s;object=%s;type=%s" % (self.token, label, t)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        raise NotImplementedError

    def stop(self):
        self.procs.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    # pkcs11-tool serves every token but the TPM's.
    def tool_key(self, label, kind):
        key_id = "%016x" % random.getrandbits(64)
        cmd = ["pkcs11-tool", "--module", self.module, "--token-label", self.token,
               "--login", "--pin", self.pin, "--label", label, "--id", key_id,
               "--sensitive", "--private"]
        if kind == "aes":
            cmd += ["--keygen", "--key-type", "AES:32"]
        else:
            cmd += ["--keypairgen", "--key-type", "rsa:2048", "--usage-decrypt"]
        run(cmd, env=self.env(), what="pkcs11-tool %s key" % kind)
        return "pkcs11-tool"


class SoftHSM(Fixture):
    """SoftHSM 2 as the other tests use it (tests/mktoken.sh)."""
    name = "softhsm"
    module = SOFTHSM

    def start(self):
        run(["sh", MKTOKEN, self.dir, "--label", "tool0"], what="mktoken.sh")
        self._env["SOFTHSM2_CONF"] = os.path.join(self.dir, "softhsm2.conf")


class OpenCryptoki(Fixture):
    """opencryptoki's soft token (swtok, slot 3). Its paths are compiled in,
    so the caller runs us inside `unshare -m -i --propagation private`: the
    bind mounts below (and the SysV shm segment pkcsslotd makes, key
    0x62004012) exist only in that namespace. pkcsslotd runs in the
    foreground, started and stopped here by PID."""
    name = "opencryptoki"
    module = multiarch_lib("libopencryptoki.so")
    pin = "43214321"          # opencryptoki wants 4 to 8 characters
    so_pin = "56785678"
    slot = "3"
    SHM_KEY = "0x62004012"

    def start(self):
        if os.environ.get("P11KMS_IN_NAMESPACE") != "1":
            raise FixtureError("opencryptoki fixture must run inside "
                               "unshare -m -i (see matrix.py)")
        root = self.dir
        dirs = {"/var/lib/opencryptoki": os.path.join(root, "lib"),
                "/run": os.path.join(root, "run"),
                "/dev/shm": os.path.join(root, "shm")}
        os.makedirs(os.path.join(root, "lib", "swtok", "TOK_OBJ"))
        os.makedirs(os.path.join(root, "run", "lock", "opencryptoki", "swtok"))
        os.makedirs(os.path.join(root, "shm"))
        for d in ("lib", os.path.join("run", "lock")):
            run(["chgrp", "-R", "pkcs11", os.path.join(root, d)], what="chgrp")
            run(["chmod", "-R", "0770", os.path.join(root, d)], what="chmod")
        os.chmod(os.path.join(root, "run", "lock"), 0o1777)
        os.chmod(os.path.join(root, "shm"), 0o1777)
        os.chmod(root, 0o755)
        for target, src in dirs.items():
            run(["mount", "--bind", src, target], what="mount --bind %s" % target)
        p = self.procs.spawn("pkcsslotd", ["pkcsslotd", "-f"])
        wait_until(lambda: os.path.exists("/run/pkcsslotd.socket"),
                   "pkcsslotd's socket", alive=lambda: p.poll() is None)
        c = ["-c", self.slot]
        run(["pkcsconf", "-I"] + c + ["-S", "87654321"], stdin=self.token + "\n",
            what="pkcsconf -I")
        run(["pkcsconf", "-P"] + c + ["-S", "87654321", "-n", self.so_pin],
            what="pkcsconf -P")
        run(["pkcsconf", "-u"] + c + ["-S", self.so_pin, "-n", "12341234"],
            what="pkcsconf -u")
        run(["pkcsconf", "-p"] + c + ["-U", "12341234", "-n", self.pin],
            what="pkcsconf -p")
        write_pin(self.pin_file, self.pin)

    def stop(self):
        self.procs.stop_all()
        # Private to our IPC namespace, but remove it anyway: the same code
        # must leave nothing behind if run without one.
        subprocess.run(["ipcrm", "-M", self.SHM_KEY], capture_output=True,
                       timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Tpm2(Fixture):
    """tpm2-pkcs11 on swtpm, through tpm2-abrmd on a private session bus;
    the tpm2-pkcs11 store lives in the temp dir."""
    name = "tpm2"
    module = multiarch_lib("libtpm2_pkcs11.so")
    so_pin = "5678"

    def start(self):
        d = self.dir
        port = free_port_pair()
        state = os.path.join(d, "state")
        store = os.path.join(d, "store")
        os.makedirs(state)
        os.makedirs(store)
        sw = self.procs.spawn("swtpm", [
            "swtpm", "socket", "--tpm2",
            "--server", "type=tcp,port=%d,bindaddr=127.0.0.1" % port,
            "--ctrl", "type=tcp,port=%d,bindaddr=127.0.0.1" % (port + 1),
            "--flags", "not-need-init,startup-clear", "--tpmstate", "dir=" + state])
        bus = os.path.join(d, "bus")
        conf = os.path.join(d, "dbus.conf")
        with open(conf, "w") as f:
            f.write("<busconfig><type>session</type><listen>unix:path=%s</listen>"
                    "<policy context=\"default\"><allow user=\"*\"/>"
                    "<allow own=\"*\"/><allow send_destination=\"*\"/>"
                    "<allow receive_sender=\"*\"/></policy></busconfig>\n"
                    % bus)
        db = self.procs.spawn("dbus", ["dbus-daemon", "--config-file=" + conf,
                                       "--nofork", "--nopidfile"])
        wait_until(lambda: os.path.exists(bus), "the private dbus-daemon",
                   alive=lambda: db.poll() is None)
        e = self._env
        e["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=" + bus
        e["TPM2TOOLS_TCTI"] = "tabrmd:bus_type=session"
        e["TPM2_PKCS11_TCTI"] = "tabrmd:bus_type=session"
        e["TPM2_PKCS11_STORE"] = store
        wait_until(lambda: sw.poll() is None and _connects(port), "swtpm",
                   alive=lambda: sw.poll() is None)
        ab = self.procs.spawn("tpm2-abrmd", [
            "tpm2-abrmd", "--session", "--allow-root", "--flush-all",
            "--tcti=swtpm:host=127.0.0.1,port=%d" % port], env=self.env())
        # A TCTI call before abrmd owns its name blocks for dbus's whole
        # method timeout: ask the bus first, then the TPM through abrmd.
        wait_until(lambda: _quick(["dbus-send", "--session", "--print-reply",
                                   "--dest=org.freedesktop.DBus", "/",
                                   "org.freedesktop.DBus.NameHasOwner",
                                   "string:com.intel.tss2.Tabrmd"], self.env(),
                                  "boolean true"),
                   "tpm2-abrmd on the private bus", alive=lambda: ab.poll() is None)
        wait_until(lambda: _quick(["tpm2_getrandom", "--hex", "4"], self.env()),
                   "the TPM through tpm2-abrmd", alive=lambda: ab.poll() is None)
        run(["tpm2_ptool", "init", "--path=" + store], env=self.env(),
            what="tpm2_ptool init")
        run(["tpm2_ptool", "addtoken", "--pid=1", "--label=" + self.token,
             "--sopin=" + self.so_pin, "--userpin=" + self.pin, "--path=" + store],
            env=self.env(), what="tpm2_ptool addtoken")
        write_pin(self.pin_file, self.pin)

    def tool_key(self, label, kind):
        alg = "aes256" if kind == "aes" else "rsa2048"
        run(["tpm2_ptool", "addkey", "--label=" + self.token, "--key-label=" + label,
             "--id=%016x" % random.getrandbits(64), "--userpin=" + self.pin,
             "--algorithm=" + alg, "--path=" + self._env["TPM2_PKCS11_STORE"]],
            env=self.env(), what="tpm2_ptool addkey %s" % alg)
        return "tpm2_ptool addkey"


def _quick(cmd, env, want=None):
    """True when cmd exits 0 within 5 s (and prints want, if given)."""
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and (want is None or want in r.stdout)


def _connects(port):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class P11KitRemote(Fixture):
    """A SoftHSM token served by `p11-kit server`; p11kms loads
    p11-kit-client.so, which reaches it over a unix socket."""
    name = "p11-kit-remote"
    module = multiarch_lib("p11-kit-client.so")

    def start(self):
        run(["sh", MKTOKEN, self.dir, "--label", "tool0"], what="mktoken.sh")
        senv = dict(os.environ, SOFTHSM2_CONF=os.path.join(self.dir, "softhsm2.conf"))
        sock = os.path.join(self.dir, "p11kit.sock")
        p = self.procs.spawn("p11-kit-server", [
            "p11-kit", "server", "-f", "--provider", SOFTHSM, "-n", sock,
            "pkcs11:token=" + self.token], env=senv)
        wait_until(lambda: os.path.exists(sock), "p11-kit server's socket",
                   alive=lambda: p.poll() is None)
        self._env["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + sock


FIXTURES = {f.name: f for f in (SoftHSM, OpenCryptoki, Tpm2, P11KitRemote)}
