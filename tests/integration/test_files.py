"""The files that decide what code runs and who logs in: the --config file,
a PKCS#11 module given by path, and the PIN file. Each must be a regular
file owned by root or the daemon's euid that neither the group nor others
can change, in a directory that neither the group nor others can write
(sticky or not); links are judged by their target. Refused at start (exit
2, a message naming the file and the fix) and at reload. A PIN file that is
a FIFO, a link, or holds more than one line is refused without blocking and
without spending a login."""

import os
import shutil
import signal
import time

import pytest

from conftest import MODULE, READY_TIMEOUT, make_token, run_p11kms
from faultctl import FAULT_SO, FaultToken

STARTUP_BOUND = 5.0       # seconds a refused start may take at most


def base_args(tok, sock, module=MODULE):
    return ["-s", sock, "-k", tok.uri(), "-m", module, "-p", tok.pin_file]


def assert_refused(r, *needles):
    assert r.returncode == 2, "exit status %s (want 2); stderr:\n%s" % (
        r.returncode, r.stderr)
    assert any(l.startswith("p11kms: ") for l in r.stderr.splitlines()), \
        r.stderr
    for n in needles:
        assert n.lower() in r.stderr.lower(), "%r not in stderr:\n%s" % (
            n, r.stderr)


def safe_dir(path, mode=0o755):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    return path


def write_config(path, tok, sock, mode=0o644):
    with open(path, "w") as f:
        f.write("socket = %s\nkey = %s\nmodule = %s\npin-file = %s\n"
                % (sock, tok.uri(), MODULE, tok.pin_file))
    os.chmod(path, mode)
    return path


# -- config file

@pytest.mark.parametrize("mode,who", [(0o666, "the group and others"),
                                      (0o646, "others"), (0o664, "the group")])
def test_writable_config_refused(tmp_path, mode, who):
    tok = make_token(str(tmp_path / "tok"))
    d = safe_dir(str(tmp_path / "etc"))
    cfg = write_config(os.path.join(d, "p11kms.conf"), tok,
                       str(tmp_path / "kms.sock"), mode)
    r = run_p11kms(["--config", cfg], env=tok.env())
    assert_refused(r, "config file " + cfg, "mode %04o" % mode,
                   who + " can change it", "chmod go-w")
    assert not os.path.exists(str(tmp_path / "kms.sock"))


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_config_in_writable_dir_refused(tmp_path, mode):
    tok = make_token(str(tmp_path / "tok"))
    d = safe_dir(str(tmp_path / "etc"), mode)
    cfg = write_config(os.path.join(d, "p11kms.conf"), tok,
                       str(tmp_path / "kms.sock"))
    r = run_p11kms(["--config", cfg], env=tok.env())
    assert_refused(r, "config file", "directory " + d, "chmod go-w " + d)
    if mode & 0o1000:
        assert "sticky" in r.stderr


def test_config_owner_refused(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    d = safe_dir(str(tmp_path / "etc"))
    cfg = write_config(os.path.join(d, "p11kms.conf"), tok,
                       str(tmp_path / "kms.sock"))
    os.chown(cfg, 12345, -1)
    r = run_p11kms(["--config", cfg], env=tok.env())
    assert_refused(r, "owned by uid 12345", "chown root")


def test_config_link_judged_by_target(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    bad = safe_dir(str(tmp_path / "bad"), 0o777)
    cfg = write_config(os.path.join(bad, "p11kms.conf"), tok,
                       str(tmp_path / "kms.sock"))
    link = os.path.join(safe_dir(str(tmp_path / "etc")), "p11kms.conf")
    os.symlink(cfg, link)
    r = run_p11kms(["--config", link], env=tok.env())
    assert_refused(r, "directory " + bad)


def test_reload_refuses_writable_config(tmp_path, spawn, pb):
    tok = make_token(str(tmp_path / "tok"))
    d = safe_dir(str(tmp_path / "etc"))
    sock = str(tmp_path / "kms.sock")
    cfg = write_config(os.path.join(d, "p11kms.conf"), tok, sock)
    dm = spawn(tok, "d", socket_=sock, args=["--config", cfg])
    os.chmod(cfg, 0o666)
    dm.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + READY_TIMEOUT
    while "reload failed" not in dm.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    err = dm.stderr()
    assert "reload failed" in err and "chmod go-w" in err, err
    assert dm.alive()
    dm.wait_ready(pb)          # the old configuration still serves


# -- module given by path

def module_copy(tmp_path, mode):
    d = safe_dir(str(tmp_path / "lib"), mode)
    so = os.path.join(d, "libsofthsm2.so")
    shutil.copy(os.path.realpath(MODULE), so)
    os.chmod(so, 0o644)
    return d, so


def test_group_writable_module_dir_refused(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    d, so = module_copy(tmp_path, 0o775)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock"), so),
                   env=tok.env())
    assert_refused(r, "PKCS#11 module " + so, "directory " + d,
                   "the group can replace", "chmod go-w")


def test_writable_module_refused(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    d, so = module_copy(tmp_path, 0o755)
    os.chmod(so, 0o666)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock"), so),
                   env=tok.env())
    assert_refused(r, "PKCS#11 module " + so, "mode 0666")


def test_module_path_in_uri_checked(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    d, so = module_copy(tmp_path, 0o777)
    args = base_args(tok, str(tmp_path / "kms.sock"))
    i = args.index("-m")
    del args[i:i + 2]
    args[args.index("-k") + 1] = tok.uri() + "?module-path=" + so
    r = run_p11kms(args, env=tok.env())
    assert_refused(r, "PKCS#11 module " + so, "directory " + d)


def test_module_in_config_checked_and_safe_copy_serves(tmp_path, spawn, pb):
    tok = make_token(str(tmp_path / "tok"))
    d, so = module_copy(tmp_path, 0o757)
    etc = safe_dir(str(tmp_path / "etc"))
    cfg = os.path.join(etc, "p11kms.conf")
    with open(cfg, "w") as f:
        f.write("socket = %s\nkey = %s\nmodule = %s\npin-file = %s\n"
                % (str(tmp_path / "kms.sock"), tok.uri(), so, tok.pin_file))
    r = run_p11kms(["--config", cfg], env=tok.env())
    assert_refused(r, "PKCS#11 module " + so, "others can replace")
    os.chmod(d, 0o755)
    spawn(tok, "d", socket_=str(tmp_path / "kms.sock"),
          args=["--config", cfg])       # serves (wait_ready)


# -- PIN file

def test_pin_fifo_refused_without_blocking(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    fifo = str(tmp_path / "pin.fifo")
    os.mkfifo(fifo, 0o600)
    args = base_args(tok, str(tmp_path / "kms.sock"))
    args[args.index("-p") + 1] = fifo
    t0 = time.monotonic()
    r = run_p11kms(args, env=tok.env(), timeout=STARTUP_BOUND)
    assert time.monotonic() - t0 < STARTUP_BOUND
    assert_refused(r, "PIN file " + fifo, "not a regular file", "FIFO")


def test_pin_symlink_refused(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    link = str(tmp_path / "pin.link")
    os.symlink(tok.pin_file, link)
    args = base_args(tok, str(tmp_path / "kms.sock"))
    args[args.index("-p") + 1] = link
    assert_refused(run_p11kms(args, env=tok.env()), "PIN file " + link,
                   "symbolic link")


def test_pin_owner_refused(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    os.chown(tok.pin_file, 12345, -1)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock")), env=tok.env())
    assert_refused(r, "PIN file", "owned by uid 12345")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_pin_dir_writable_refused(tmp_path, mode):
    tok = make_token(str(tmp_path / "tok"))
    os.chmod(os.path.dirname(tok.pin_file), mode)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock")), env=tok.env())
    assert_refused(r, "PIN file", "directory", "chmod go-w")


def test_pin_0660_names_group_write(tmp_path):
    tok = make_token(str(tmp_path / "tok"))
    os.chmod(tok.pin_file, 0o660)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock")), env=tok.env())
    assert_refused(r, "PIN file", "the group can change it")
    assert "others" not in r.stderr


def test_pin_0440_still_allowed(tmp_path, spawn):
    tok = make_token(str(tmp_path / "tok"))
    os.chmod(tok.pin_file, 0o440)
    spawn(tok, "d")


@pytest.mark.parametrize("text", ["\n\n", "\r\n\r\n", "\n\r\n", "\n\n\n"])
def test_pin_more_than_one_newline_never_sent(tmp_path, faults, text):
    tok = make_token(str(tmp_path / "tok"))
    with open(tok.pin_file, "w") as f:
        f.write(tok.pin + text)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock"), FAULT_SO),
                   env=FaultToken(tok, faults).env())
    assert_refused(r, "PIN file " + tok.pin_file, "more than one line")
    assert tok.pin not in r.stderr.replace(str(tmp_path), "")
    assert faults.count("C_Login") == 0, faults.counts()
