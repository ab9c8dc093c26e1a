"""A module writing on the process's stderr (as tpm2's TSS does) must not
break the structured log: the fault module's `FUNC stderr TEXT` rule writes
TEXT on fd 2 from inside the token call, and the daemon's stderr must hold
only well-formed records (logfmt, or JSON with --log-format json), one of
them carrying the module's text, escaped.
"""

import json
import re

from conftest import Client, assert_healthy
from faultctl import FAULT_SO, FaultToken

ESC_TEXT = "ERROR:esys:src/tss2-esys/api/Esys_RSA_Decrypt.c:321 \x1b[31mboom\x1b[0m \u202e end"
RULES = ("C_Login stderr login note from the module\n"
         "C_Encrypt stderr %s\n"
         "C_Finalize stderr bye from C_Finalize\n" % ESC_TEXT)

_VAL = r'(?:[A-Za-z0-9\-._:/@+,%]+|"(?:[^"\\]|\\.)*")'
LOGFMT = re.compile(r'^ts=\S+ level=(?:error|warn|info|debug) '
                    r'msg="(?:[^"\\]|\\.)*"(?: [A-Za-z0-9_.\-]+=' + _VAL +
                    r')*$')


def _serve_and_stop(token, faults, spawn, pb, extra=(), encrypts=3):
    faults.set(RULES)
    ft = FaultToken(token, faults)
    d = spawn(ft, module=FAULT_SO, extra=list(extra))
    assert_healthy(d, pb, "with a module writing on stderr")
    c = Client(d, pb)
    try:
        for _ in range(encrypts):
            c.encrypt(b"x" * 32, timeout=5)
    finally:
        c.close()
    assert d.stop() == 0, d.stderr()
    return d.stderr()


def test_module_stderr_becomes_logfmt_records(token, faults, spawn, pb):
    err = _serve_and_stop(token, faults, spawn, pb)
    lines = err.splitlines()
    assert lines, "no output at all"
    for ln in lines:
        assert LOGFMT.match(ln), "not a logfmt record: %r" % ln
    assert "\x1b" not in err and "\u202e" not in err
    want = ('level=warn msg="module stderr" line="ERROR:esys:src/tss2-esys/'
            'api/Esys_RSA_Decrypt.c:321 \\u001b[31mboom\\u001b[0m '
            '\\u202e end"')
    assert any(ln.endswith(want) for ln in lines), err
    assert any('line="login note from the module"' in ln for ln in lines)
    # Written during C_Finalize, after the loop stopped: drained at exit.
    assert any('line="bye from C_Finalize"' in ln for ln in lines), err


def test_module_stderr_becomes_json_records(token, faults, spawn, pb):
    err = _serve_and_stop(token, faults, spawn, pb,
                          extra=["--log-format", "json"])
    recs = []
    for ln in err.splitlines():
        recs.append(json.loads(ln))   # every line is one JSON object
    assert all(isinstance(r, dict) and "msg" in r for r in recs)
    mod = [r for r in recs if r["msg"] == "module stderr"]
    assert any(r["line"] == ESC_TEXT and r["level"] == "warn" for r in mod), \
        mod
    assert any(r["line"] == "bye from C_Finalize" for r in mod), mod
    assert "\x1b" not in err


def test_chatty_module_is_rate_limited(token, faults, spawn, pb):
    err = _serve_and_stop(token, faults, spawn, pb, encrypts=120)
    lines = err.splitlines()
    for ln in lines:
        assert LOGFMT.match(ln), "not a logfmt record: %r" % ln
    n = sum('msg="module stderr" line="ERROR:esys' in ln for ln in lines)
    dropped = [ln for ln in lines if 'msg="module stderr lines dropped"' in ln]
    assert n < 120, n
    assert dropped, err[-3000:]
    total = sum(int(re.search(r" dropped=(\d+)", ln).group(1))
                for ln in dropped)
    # Every module line is either logged or counted (login, probes,
    # finalize add a few of their own).
    assert n + total >= 120, (n, total)
