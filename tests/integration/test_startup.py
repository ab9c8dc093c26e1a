"""Command line and start-up failures: exit status 2 and a "p11kms: " message
for every usage/config error, never a hang, never a secret in the output."""

import os

import pytest

from conftest import (MODULE, make_token, rand_suffix, run_p11kms,
                      sanitizer_report)

FLAGS = ["-s", "--socket", "-k", "--key", "-m", "--module", "-p", "--pin-file",
         "--workers", "--max-inflight", "--probe-interval", "--kms-version",
         "--max-request-bytes", "--log-level", "-h", "--help", "-V",
         "--version"]


def has_p11kms_line(text):
    return any(l.startswith("p11kms: ") for l in text.splitlines())


def base_args(tok, sock, label="kek1"):
    return ["-s", sock, "-k", tok.uri(label), "-m", MODULE, "-p", tok.pin_file]


def assert_usage_error(r, *needles):
    rep = sanitizer_report(r.stderr)
    assert rep is None, "sanitizer report:\n" + rep
    assert r.returncode == 2, "exit status %s (want 2); stderr:\n%s" % (
        r.returncode, r.stderr)
    assert has_p11kms_line(r.stderr), \
        "no stderr line starts with 'p11kms: ':\n%s" % r.stderr
    for n in needles:
        assert n.lower() in r.stderr.lower(), "%r not in stderr:\n%s" % (
            n, r.stderr)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag):
    r = run_p11kms([flag])
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    for f in FLAGS:
        assert f in text, "--help does not mention %s" % f
    for word in ("v2beta1", "@"):
        assert word in text, "--help does not mention %r" % word


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    r = run_p11kms([flag])
    assert r.returncode == 0, r.stderr
    text = (r.stdout + r.stderr).strip()
    assert "p11kms" in text and any(ch.isdigit() for ch in text), text


@pytest.mark.parametrize("args", [["--bogus"], ["-Z"], ["--socket"],
                                  ["extra-positional"]])
def test_bad_usage(args):
    assert_usage_error(run_p11kms(args))


def test_extractable_key_refused(tmp_path):
    tok = make_token(str(tmp_path / "t"), extractable=True)
    r = run_p11kms(base_args(tok, str(tmp_path / "s.sock")), env=tok.env())
    assert_usage_error(r, "extractable")
    assert not os.path.exists(tmp_path / "s.sock")


def test_missing_key_label(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    label = "nope-" + rand_suffix()
    r = run_p11kms(base_args(tok, str(tmp_path / "s.sock"), label),
                   env=tok.env())
    assert_usage_error(r, label)


def test_one_of_two_keys_missing(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    label = "gone-" + rand_suffix()
    r = run_p11kms(base_args(tok, str(tmp_path / "s.sock")) +
                   ["-k", tok.uri(label)], env=tok.env())
    assert_usage_error(r, label)


def test_missing_token(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    args = ["-s", str(tmp_path / "s.sock"), "-k",
            "pkcs11:token=absent-%s;object=kek1;type=secret-key" % rand_suffix(),
            "-m", MODULE, "-p", tok.pin_file]
    assert_usage_error(run_p11kms(args, env=tok.env()), "absent-")


def test_wrong_pin(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    wrong = "86420975319"
    pf = str(tmp_path / "wrongpin")
    fd = os.open(pf, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (wrong + "\n").encode())
    os.close(fd)
    args = base_args(tok, str(tmp_path / "s.sock"))
    args[args.index("-p") + 1] = pf
    r = run_p11kms(args, env=tok.env())
    assert_usage_error(r)
    assert "pin" in r.stderr.lower(), "message does not say the PIN is the problem"
    assert wrong not in r.stderr + r.stdout, "the PIN value appears in the output"


def test_missing_pin_file(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    args = base_args(tok, str(tmp_path / "s.sock"))
    missing = str(tmp_path / "no-such-pin-file")
    args[args.index("-p") + 1] = missing
    assert_usage_error(run_p11kms(args, env=tok.env()), "no-such-pin-file")


def test_pin_value_in_uri_refused(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    args = ["-s", str(tmp_path / "s.sock"), "-k",
            tok.uri() + "?pin-value=1234", "-m", MODULE]
    r = run_p11kms(args, env=tok.env())
    assert_usage_error(r)
    assert "pin-value=1234" not in r.stderr


def test_no_key_given(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    r = run_p11kms(["-s", str(tmp_path / "s.sock"), "-m", MODULE,
                    "-p", tok.pin_file], env=tok.env())
    assert_usage_error(r)


def test_bad_module(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    args = base_args(tok, str(tmp_path / "s.sock"))
    args[args.index("-m") + 1] = str(tmp_path / "nomodule.so")
    assert_usage_error(run_p11kms(args, env=tok.env()), "nomodule.so")


def test_garbage_uri(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    args = base_args(tok, str(tmp_path / "s.sock"))
    args[args.index("-k") + 1] = "not-a-uri"
    assert_usage_error(run_p11kms(args, env=tok.env()))


@pytest.mark.parametrize("opt,val", [
    ("--kms-version", "v3"), ("--kms-version", "v1beta1"),
    ("--log-level", "loud"), ("--workers", "abc"), ("--workers", "-1"),
    ("--max-inflight", "0x"), ("--probe-interval", "never"),
    ("--max-request-bytes", "lots"), ("--workers", "99999999999999999999"),
    ("--workers", "0"), ("--max-inflight", "0"), ("--probe-interval", "0"),
    ("--max-request-bytes", "-1"),
])
def test_bad_option_values(tmp_path, opt, val):
    tok = make_token(str(tmp_path / "t"))
    r = run_p11kms(base_args(tok, str(tmp_path / "s.sock")) + [opt, val],
                   env=tok.env())
    assert_usage_error(r)


def test_socket_dir_missing(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    r = run_p11kms(base_args(tok, str(tmp_path / "no" / "dir" / "s.sock")),
                   env=tok.env())
    assert r.returncode != 0
    assert has_p11kms_line(r.stderr), r.stderr


def test_second_key_extractable_refused(tmp_path):
    tok = make_token(str(tmp_path / "t"))
    make_token(tok.dir, label="kek2", key_id="02", extractable=True,
               add_key_only=True)
    r = run_p11kms(base_args(tok, str(tmp_path / "s.sock")) +
                   ["-k", tok.uri("kek2")], env=tok.env())
    assert_usage_error(r, "extractable")


@pytest.mark.parametrize("uri_extra", [";foo=bar", ";type=private-key"])
def test_unusable_uri_refused(tmp_path, uri_extra):
    tok = make_token(str(tmp_path / "t"))
    args = base_args(tok, str(tmp_path / "s.sock"))
    args[args.index("-k") + 1] = "pkcs11:token=kms;object=kek1" + uri_extra
    assert_usage_error(run_p11kms(args, env=tok.env()))


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o620])
def test_pin_file_others_can_read_or_change_refused(tmp_path, mode):
    tok = make_token(str(tmp_path / "tok"))
    os.chmod(tok.pin_file, mode)
    r = run_p11kms(base_args(tok, str(tmp_path / "kms.sock")), env=tok.env())
    assert_usage_error(r, "pin file", "chmod 0400")
    assert tok.pin not in r.stderr.replace(str(tmp_path), "")
    assert not os.path.exists(str(tmp_path / "kms.sock"))


def test_no_module_named_warns(token, spawn):
    """Without --module every module registered with p11-kit is loaded
    into the daemon to find the token: it says so, and which module has
    the token; naming the module silences it. keys says the same."""
    # Every registered module is loaded: under the sanitizer build, keep
    # them mapped (tests/lsan) so their own leaks are suppressed by name.
    pre = os.environ.get("P11KMS_TEST_PRELOAD", "")

    class Preload(type(token)):
        def env(self):
            e = super().env()
            if pre:
                e["LD_PRELOAD"] = pre
            return e
    token = Preload(token.dir, token=token.token, pin=token.pin)
    d = spawn(token, module=None)
    err = d.stderr()
    assert "no PKCS#11 module named" in err, err[-2000:]
    assert "level=warn" in err.split("no PKCS#11 module named")[0] \
        .rsplit("\n", 1)[-1]
    assert "softhsm2" in err.split("no PKCS#11 module named")[1] \
        .split("\n", 1)[0], err[-2000:]
    named = spawn(token, name="named")
    assert "no PKCS#11 module named" not in named.stderr()
    r = run_p11kms(["keys", "-p", token.pin_file, "pkcs11:token=kms"],
                   env=token.env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert "p11kms: keys: no PKCS#11 module named" in r.stderr, r.stderr
    r = run_p11kms(["keys", "-m", MODULE, "-p", token.pin_file,
                    "pkcs11:token=kms"], env=token.env(), timeout=30)
    assert "no PKCS#11 module named" not in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["bad-uri", "missing-key", "bad-flag"])
def test_fatal_errors_are_json_records(tmp_path, case):
    """Under --log-format json every stderr line is a JSON record, the
    fatal start-up error included (it used to be a plain line)."""
    import json
    tok = make_token(str(tmp_path / "t"))
    args = ["--log-format", "json"] + base_args(tok, str(tmp_path / "s.sock"))
    if case == "bad-uri":
        args[args.index("-k") + 1] = "pkcs11:token=kms;object=kek1;bogus=1"
    elif case == "missing-key":
        args[args.index("-k") + 1] = tok.uri("nosuchkey")
    else:
        args += ["--workers", "0"]
    r = run_p11kms(args, env=tok.env())
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines, "no output"
    recs = []
    for l in lines:
        try:
            recs.append(json.loads(l))
        except ValueError:
            raise AssertionError("not a JSON record: %r\nstderr:\n%s"
                                 % (l, r.stderr))
    assert any(x.get("level") == "error" for x in recs), r.stderr
