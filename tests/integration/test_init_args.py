"""Modules that need C_Initialize arguments (CK_C_INITIALIZE_ARGS.pReserved).

The fault module plays one: with the rule `C_Initialize require-reserved S`
its C_Initialize fails CKR_ARGUMENTS_BAD unless pReserved is S (and then
forwards to SoftHSM with pReserved NULL). Loaded by path without
--module-init-args, p11kms must say what the module probably needs and how
to give it; with the option it serves; with a p11-kit module name (or no
module) the option is a configuration error.
"""

import os
import signal
import time

from conftest import TOKEN_PROCESS, assert_healthy, run_p11kms
from faultctl import FAULT_SO, FaultToken

ARGS = "configdir=/etc/vendor mode=1"
RULE = "C_Initialize require-reserved " + ARGS


def _fixed(token, faults, *extra):
    ft = FaultToken(token, faults)
    return ft, ["-s", os.path.join(token.dir, "never.sock"), "-k",
                token.uri(), "-m", FAULT_SO, "-p", token.pin_file] + \
        list(extra)


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_arguments_bad_says_how_to_pass_them(token, faults):
    faults.set(RULE)
    ft, args = _fixed(token, faults)
    r = run_p11kms(args, env=ft.env())
    assert r.returncode != 0, r.stderr
    err = r.stderr
    assert "CKR_ARGUMENTS_BAD" in err, err
    assert "probably needs C_Initialize arguments" in err, err
    # The two lines of a p11-kit module file, and both ways out.
    assert '"module: %s"' % FAULT_SO in err, err
    assert '"x-init-reserved: ARGS"' in err, err
    assert "/etc/pkcs11/modules/NAME.module" in err, err
    assert "--module NAME" in err and "--module-init-args" in err, err
    assert faults.count("C_Initialize") >= 1


def test_init_args_serve(token, faults, spawn, pb):
    faults.set(RULE)
    ft = FaultToken(token, faults)
    d = spawn(ft, module=FAULT_SO,
              extra=["--module-init-args", ARGS, "--workers", "4"])
    assert_healthy(d, pb, "with --module-init-args")
    assert "module_init_args=\"(%d bytes)\"" % len(ARGS) in d.stderr()
    assert ARGS not in d.stderr()     # the string itself is never logged
    # A reload keeping the string: in one process it shares the
    # initialized module; a token process per generation initializes its
    # own.
    os.kill(d.proc.pid, signal.SIGHUP)
    assert _wait_for(lambda: "msg=\"reloaded:" in d.stderr()), d.stderr()
    assert "reload failed" not in d.stderr()
    assert_healthy(d, pb, "after a reload with the same string")
    assert faults.count("C_Initialize") == (2 if TOKEN_PROCESS else 1), \
        faults.counts()


def test_reload_with_another_string_keeps_serving(token, faults, spawn, pb,
                                                  tmp_path):
    faults.set(RULE)
    conf = str(tmp_path / "p11kms.conf")

    def write(args):
        with open(conf + ".tmp", "w") as f:
            f.write("module-init-args = %s\n" % args)
        os.rename(conf + ".tmp", conf)
    write(ARGS)
    ft = FaultToken(token, faults)
    d = spawn(ft, module=FAULT_SO, extra=["-c", conf])
    write("configdir=/elsewhere")
    os.kill(d.proc.pid, signal.SIGHUP)
    assert _wait_for(lambda: "reload failed" in d.stderr()), d.stderr()
    if TOKEN_PROCESS:
        # A new token process initializes the module with the new string,
        # which this module refuses.
        assert "refused the string" in d.stderr()
    else:
        # One process: the module is initialized with the old one.
        assert "restart p11kms" in d.stderr()
    assert_healthy(d, pb, "after a refused reload")


def test_module_path_from_the_uri(token, faults, spawn, pb):
    """No --module: the key URI's module-path is a module by path too."""
    faults.set(RULE)
    ft = FaultToken(token, faults)
    d = spawn(ft, module=None,
              keys=[token.uri() + "?module-path=" + FAULT_SO],
              extra=["--module-init-args", ARGS])
    assert_healthy(d, pb, "with the URI's module-path")


def test_wrong_string_is_refused(token, faults):
    faults.set(RULE)
    ft, args = _fixed(token, faults, "--module-init-args", "configdir=/x")
    r = run_p11kms(args, env=ft.env())
    assert r.returncode != 0
    assert "with --module-init-args: CKR_ARGUMENTS_BAD" in r.stderr, r.stderr
    assert "refused the string" in r.stderr


def test_option_with_module_name_is_a_config_error(token, faults):
    ft = FaultToken(token, faults)
    r = run_p11kms(["-s", os.path.join(token.dir, "x.sock"), "-k",
                    token.uri(), "-m", "softhsm2", "-p", token.pin_file,
                    "--module-init-args", ARGS], env=ft.env())
    assert r.returncode == 2, r.stderr
    assert "p11-kit module name" in r.stderr
    assert "x-init-reserved" in r.stderr


def test_option_without_module_is_a_config_error(token, faults):
    ft = FaultToken(token, faults)
    r = run_p11kms(["-s", os.path.join(token.dir, "x.sock"), "-k",
                    token.uri(), "-p", token.pin_file,
                    "--module-init-args", ARGS], env=ft.env())
    assert r.returncode == 2, r.stderr
    assert "needs the module given by path" in r.stderr, r.stderr


def test_option_in_config_file(token, faults, spawn, pb, tmp_path):
    faults.set(RULE)
    conf = str(tmp_path / "p11kms.conf")
    sock = str(tmp_path / "kms.sock")
    with open(conf, "w") as f:
        f.write("socket = %s\nkey = %s\nmodule = %s\npin-file = %s\n"
                "module-init-args = %s\n" % (sock, token.uri(), FAULT_SO,
                                             token.pin_file, ARGS))
    ft = FaultToken(token, faults)
    d = spawn(ft, args=["-c", conf], socket_=sock)
    assert_healthy(d, pb, "with module-init-args from the config file")


def test_subcommands_take_it(token, faults):
    faults.set(RULE)
    ft = FaultToken(token, faults)
    base = ["--module", FAULT_SO, "--pin-file", token.pin_file]
    r = run_p11kms(["keys"] + base + ["--module-init-args", ARGS,
                                      "pkcs11:token=kms"], env=ft.env())
    assert r.returncode == 0, r.stderr
    assert "kek1" in r.stdout
    r = run_p11kms(["keys"] + base + ["pkcs11:token=kms"], env=ft.env())
    assert r.returncode != 0
    assert "probably needs C_Initialize arguments" in r.stderr, r.stderr
    r = run_p11kms(["selftest", "-k", token.uri()] + base +
                   ["--module-init-args", ARGS], env=ft.env())
    assert r.returncode == 0, r.stderr
    assert "ready" in r.stdout


def test_module_fault_reinitializes_with_the_string(token, faults, spawn, pb,
                                                    client_for):
    """Recovery finalizes the module and initializes it again, with the
    string again (the fault module refuses it otherwise)."""
    import grpc

    faults.set(RULE)
    ft = FaultToken(token, faults)
    d = spawn(ft, module=FAULT_SO,
              extra=["--module-init-args", ARGS, "--probe-interval", "1"])
    c = client_for(d)
    e = c.encrypt(b"k" * 32, timeout=5)
    inits, finals = faults.count("C_Initialize"), faults.count("C_Finalize")
    faults.set(RULE + "\n* CKR_DEVICE_REMOVED")

    def down():
        try:
            return c.status(timeout=2).healthz != "ok"
        except grpc.RpcError:
            return False
    assert _wait_for(down, 5), d.stderr()[-2000:]
    assert _wait_for(lambda: faults.count("C_Finalize") > finals, 5), \
        faults.counts()
    faults.set(RULE)

    def up():
        try:
            return c.status(timeout=2).healthz == "ok"
        except grpc.RpcError:
            return False
    assert _wait_for(up, 15), d.stderr()[-2000:]
    assert faults.count("C_Initialize") > inits
    r = c.decrypt(e.ciphertext, e.key_id, e.annotations, timeout=5)
    assert r.plaintext == b"k" * 32
    assert "already initialized" not in d.stderr()
