"""p11kms init-token: a token made with both PINs read from files, then
keygen and selftest on it; an existing label is refused and never touched;
PIN files follow the PIN file rules. And the scripts that make tokens
(make run's scripts/run.sh, the SoftHSM image's entry point) use it: no PIN
on any command line, and make run's var/ is 0700."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import MODULE, REPO, binary

SCRIPTS = ["scripts/run.sh", "docker/softhsm-entrypoint.sh"]


def softhsm_dir(path):
    os.makedirs(os.path.join(path, "tokens"))
    os.chmod(path, 0o700)
    conf = os.path.join(path, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s/tokens\nobjectstore.backend = "
                "file\nlog.level = ERROR\nslots.removable = false\n" % path)
    return dict(os.environ, SOFTHSM2_CONF=conf)


def pin_file(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def tool(args, env):
    return subprocess.run([binary()] + args, env=env, capture_output=True,
                          text=True, timeout=60)


def init_args(d, label="kms"):
    return ["init-token", "--module", MODULE, "--label", label,
            "--so-pin-file", os.path.join(d, "so-pin"),
            "--pin-file", os.path.join(d, "pin")]


def labels(env):
    r = subprocess.run(["softhsm2-util", "--show-slots"], env=env,
                       capture_output=True, text=True, timeout=60)
    return re.findall(r"Label:\s+(\S+)", r.stdout)


def test_init_token_then_keygen_and_selftest(tmp_path):
    d = str(tmp_path / "hsm")
    env = softhsm_dir(d)
    pin_file(os.path.join(d, "so-pin"), "so-secret-5678\n")
    pin_file(os.path.join(d, "pin"), "user-secret-1234\n")
    r = tool(init_args(d), env)
    assert r.returncode == 0, r.stderr
    assert "label      kms" in r.stdout, r.stdout
    assert labels(env) == ["kms"]
    uri = "pkcs11:token=kms;object=kek1"
    r = tool(["keygen", "-m", MODULE, "-p", os.path.join(d, "pin"), uri],
             env)
    assert r.returncode == 0, r.stderr
    r = tool(["selftest", "-m", MODULE, "-p", os.path.join(d, "pin"),
              "-k", uri + ";type=secret-key"], env)
    assert r.returncode == 0 and "ready" in r.stdout, r.stdout + r.stderr
    # The SO PIN logs in as SO, the user PIN as user (pkcs11-tool)
    # (--init-pin as SO: a read-write session, and the same user PIN.)
    for login in (["--login-type", "so", "--so-pin", "so-secret-5678",
                   "--init-pin", "--new-pin", "user-secret-1234"],
                  ["--pin", "user-secret-1234", "--list-objects"]):
        r = subprocess.run(["pkcs11-tool", "--module", MODULE,
                            "--token-label", "kms", "--login"] + login,
                           env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_init_token_refuses_existing_label(tmp_path):
    d = str(tmp_path / "hsm")
    env = softhsm_dir(d)
    pin_file(os.path.join(d, "so-pin"), "5678\n")
    pin_file(os.path.join(d, "pin"), "1234\n")
    assert tool(init_args(d), env).returncode == 0
    r = tool(init_args(d), env)
    assert r.returncode == 2, r.stderr
    assert "exists already" in r.stderr and "kms" in r.stderr
    assert labels(env) == ["kms"]       # nothing made, nothing changed


@pytest.mark.parametrize("case", ["pin-0644", "so-pin-two-lines",
                                  "missing-flag", "label-too-long"])
def test_init_token_refusals_touch_nothing(tmp_path, case):
    d = str(tmp_path / "hsm")
    env = softhsm_dir(d)
    pin_file(os.path.join(d, "so-pin"),
             "5678\n\n" if case == "so-pin-two-lines" else "5678\n")
    pin_file(os.path.join(d, "pin"), "1234\n",
             0o644 if case == "pin-0644" else 0o600)
    args = init_args(d, "x" * 33 if case == "label-too-long" else "kms")
    if case == "missing-flag":
        args = args[:-2]
    r = tool(args, env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("p11kms: init-token: "), r.stderr
    assert labels(env) == []
    assert "1234" not in r.stderr and "5678" not in r.stderr


def test_init_token_help():
    r = tool(["init-token", "--help"], dict(os.environ))
    assert r.returncode == 0
    for flag in ("--module", "--label", "--so-pin-file", "--pin-file"):
        assert flag in r.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_no_pin_as_argument(script):
    with open(os.path.join(REPO, script)) as f:
        code = [l for l in f if not l.lstrip().startswith("#")]
    bad = [l.strip() for l in code
           if re.search(r"--(so-)?pin(\s|=|\b)(?!-file)", l)]
    assert bad == [], "%s passes a PIN as an argument: %s" % (script, bad)
    assert "init-token" in "".join(code)


def test_make_run_var_is_0700_and_serves(tmp_path):
    """scripts/run.sh (make run) in a temp state folder: var/ is 0700, the
    PIN files 0600, the daemon serves; stopped by SIGTERM."""
    var = str(tmp_path / "var")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, P11KMS_VAR=var, P11KMS_OPS="127.0.0.1:%d" % port)
    env.pop("SOFTHSM2_CONF", None)
    log = open(str(tmp_path / "log"), "w+")
    # umask 022 as a login shell has: the script must set its own.
    p = subprocess.Popen(["sh", "-c", "umask 022; exec sh \"$0\" \"$1\"",
                          os.path.join(REPO, "scripts", "run.sh"), binary()],
                         env=env, stdout=log, stderr=subprocess.STDOUT,
                         cwd=str(tmp_path))
    try:
        sock = os.path.join(var, "kms.sock")
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(sock):
            assert p.poll() is None, open(log.name).read()
            time.sleep(0.1)
        assert os.path.exists(sock), open(log.name).read()
        assert os.stat(var).st_mode & 0o777 == 0o700, oct(os.stat(var).st_mode)
        for f in ("pin", "so-pin"):
            assert os.stat(os.path.join(var, f)).st_mode & 0o777 == 0o600
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    text = open(log.name).read()
    pin = open(os.path.join(var, "pin")).read().strip()
    assert pin not in text
