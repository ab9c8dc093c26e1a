"""Token portability on SoftHSM behind the fault module: AES-GCM with an IV
the token makes (each FIPS-mode form: 2.40 write-back, appended 16 or 12
bytes, the PKCS#11 3.0 message API), envelopes crossing between a token
that takes our IVs and one that refuses them, PKCS#11 calls per request,
and keygen on tokens with strict templates.

The fault module (tests/faultmod) forwards to a real SoftHSM token; its
"C_EncryptInit gcm-iv MODE" rule makes it refuse caller-chosen GCM IVs
with CKR_MECHANISM_PARAM_INVALID and make them itself, as Luna,
ProtectServer and CloudHSM do in FIPS mode. Every daemon runs in this
test's tmp dir and is stopped by PID at teardown (spawn fixture).
"""

import os
import re

import pytest

from conftest import MODULE, make_token, run_p11kms
from faultctl import FAULT_SO, FaultToken
from test_rotation import Both, reload_and_wait, write_config

# form -> (row the key seals with, what the seal found, IV length)
FORMS = {
    "writeback": ("aes-gcm/token-iv", "IV written back by the token", 12),
    "append": ("aes-gcm/token-iv", "16-byte IV appended by the token", 16),
    "append12": ("aes-gcm/token-iv", "12-byte IV appended by the token", 12),
    "message": ("aes-gcm/message",
                "IV made by the token (PKCS#11 3.0 message API)", 12),
}
ENV_GCM, ENV_KWP, ENV_TIV = 0x01, 0x02, 0x05
TOOL_TIMEOUT = 60


@pytest.fixture
def ftoken(token, faults):
    if not os.path.exists(FAULT_SO):
        pytest.skip("fault module not built")
    return FaultToken(token, faults)


def tool(tok, *args):
    return run_p11kms(list(args), env=tok.env(), timeout=TOOL_TIMEOUT)


def round_trips(c):
    """v2 and v1 Encrypt + Decrypt; returns (v2 response, v1 cipher)."""
    pt = os.urandom(32)
    r = c.enc2(pt)
    assert c.dec2(r) == pt
    ct1 = c.enc1(pt)
    assert c.dec1(ct1) == pt
    return r, ct1


@pytest.mark.parametrize("form", sorted(FORMS))
def test_token_made_iv(form, ftoken, faults, spawn, pb):
    row, detail, ivlen = FORMS[form]
    faults.set("C_EncryptInit gcm-iv %s" % form)
    d = spawn(ftoken, module=FAULT_SO, extra=["--probe-interval", "30"])
    err = d.stderr()
    # Found by the probe seal at load, never by vendor name, and said.
    assert "mechanism=%s (%s)" % (row, detail) in err, err[-2000:]
    c = Both(d, pb)
    try:
        assert c.status().healthz == "ok"
        r, ct1 = round_trips(c)
        for ct in (r.ciphertext, ct1):
            # Envelope: format 1, mechanism 0x05, the token's IV.
            assert ct[0] == 1 and ct[1] == ENV_TIV, ct[:2].hex()
            assert ct[18] == ivlen, "IV length %d, want %d" % (ct[18], ivlen)
            assert len(ct) == 19 + ivlen + 32 + 16
            assert ct[19:19 + ivlen] != bytes(ivlen)
        # Two seals of the same value: two IVs, two ciphertexts.
        assert c.enc2(b"s" * 32).ciphertext != c.enc2(b"s" * 32).ciphertext
    finally:
        c.close()

    # keys and selftest say the same, through the same module.
    k = tool(ftoken, "keys", "--module", FAULT_SO, "--pin-file",
             ftoken.pin_file, "pkcs11:token=kms")
    assert k.returncode == 0, k.stderr
    assert "kek1 seals with %s: %s" % (row, detail) in k.stdout, k.stdout
    s = tool(ftoken, "selftest", "--module", FAULT_SO, "--pin-file",
             ftoken.pin_file, "--key", ftoken.uri())
    assert s.returncode == 0, s.stdout + s.stderr
    assert row in s.stdout and "[%s]" % detail in s.stdout, s.stdout


def test_envelopes_cross_fips_mode(ftoken, faults, spawn, pb):
    """A key used by a token that takes our IVs and later by one in FIPS
    mode (or the reverse): every envelope still opens, and each side seals
    its own way."""
    faults.clear()
    d = spawn(ftoken, "plain", module=FAULT_SO)
    c = Both(d, pb)
    pt = os.urandom(32)
    old2, old1 = c.enc2(pt), c.enc1(pt)
    assert old2.ciphertext[1] == ENV_GCM and old1[1] == ENV_GCM
    c.close()
    d.stop()

    faults.set("C_EncryptInit gcm-iv append")
    d = spawn(ftoken, "fips", module=FAULT_SO)
    c = Both(d, pb)
    assert c.status().key_id == old2.key_id, "key_id changed with FIPS mode"
    assert c.dec2(old2) == pt and c.dec1(old1) == pt
    new2, new1 = c.enc2(pt), c.enc1(pt)
    assert new2.ciphertext[1] == ENV_TIV and new1[1] == ENV_TIV
    c.close()
    d.stop()

    faults.clear()
    d = spawn(ftoken, "plain2", module=FAULT_SO)
    c = Both(d, pb)
    try:
        assert c.dec2(new2) == pt and c.dec1(new1) == pt
        # A token-IV envelope's AAD binds the header: a mechanism byte
        # turned back into 0x01 does not open.
        bad = bytearray(new1)
        bad[1] = ENV_GCM
        with pytest.raises(Exception):
            c.dec1(bytes(bad))
    finally:
        c.close()


def test_rotation_in_fips_mode(tmp_path, ftoken, faults, spawn, pb):
    """A SIGHUP rotation to a key keygen made, all in FIPS (message) mode."""
    faults.set("C_EncryptInit gcm-iv message")
    r = tool(ftoken, "keygen", "--module", FAULT_SO, "--pin-file",
             ftoken.pin_file, "pkcs11:token=kms;object=kek2")
    assert r.returncode == 0, r.stderr
    assert "seal       aes-gcm/message" in r.stdout, r.stdout
    conf = str(tmp_path / "p11kms.conf")
    write_config(conf, ftoken, ["kek1"])
    with open(conf) as f:
        text = f.read().replace("module = %s" % MODULE, "module = %s" %
                                FAULT_SO)
    with open(conf, "w") as f:
        f.write(text)
    sock = str(tmp_path / "kms.sock")
    d = spawn(ftoken, socket_=sock, args=["--config", conf, "--socket", sock])
    c = Both(d, pb)
    try:
        old, old1 = round_trips(c)
        with open(conf, "w") as f:
            f.write(text.replace("key = %s" % ftoken.uri("kek1"),
                                 "key = %s\nkey = %s" % (
                                     ftoken.uri("kek2"), ftoken.uri("kek1"))))
        reload_and_wait(d, "reloaded")
        assert c.status().key_id != old.key_id
        new, _ = round_trips(c)
        assert new.key_id != old.key_id and new.ciphertext[1] == ENV_TIV
        assert c.dec2(old) and c.dec1(old1)
    finally:
        c.close()


def calls_per_request(faults, c, n=40):
    before = faults.counts()
    for _ in range(n):
        c.enc2(b"k" * 32)
    after = faults.counts()
    return {f: (after.get(f, 0) - before.get(f, 0)) / n
            for f in set(after) | set(before)
            if after.get(f, 0) != before.get(f, 0)}


def test_message_api_seal_is_one_call(ftoken, faults, spawn, pb):
    """On the 3.0 message API the operation is initialized once per session
    and key: a seal is one C_EncryptMessage, nothing else."""
    faults.set("C_EncryptInit gcm-iv message")
    d = spawn(ftoken, module=FAULT_SO, extra=["--workers", "1",
                                              "--probe-interval", "60"])
    c = Both(d, pb)
    try:
        c.enc2(b"w" * 32)                # the worker's first: init
        per = calls_per_request(faults, c)
    finally:
        c.close()
    assert per == {"C_EncryptMessage": 1.0}, per


def test_caller_iv_seal_is_two_calls(ftoken, faults, spawn, pb):
    """The baseline beside it: C_EncryptInit + C_Encrypt."""
    faults.clear()
    d = spawn(ftoken, module=FAULT_SO, extra=["--workers", "1",
                                              "--probe-interval", "60"])
    c = Both(d, pb)
    try:
        per = calls_per_request(faults, c)
    finally:
        c.close()
    assert per == {"C_EncryptInit": 1.0, "C_Encrypt": 1.0}, per


# --------------------------------------------------------------------------
# keygen on strict tokens


def keygen(tok, label, *extra):
    return tool(tok, "keygen", "--module", FAULT_SO, "--pin-file",
                tok.pin_file, *extra, "pkcs11:token=kms;object=%s" % label)


def test_keygen_drops_optional_attributes(ftoken, faults):
    # A token that refuses the first two templates, the way one refuses
    # CKA_ALLOWED_MECHANISMS with CKR_GENERAL_ERROR.
    faults.set("C_GenerateKey CKR_GENERAL_ERROR 2")
    r = keygen(ftoken, "strict1")
    assert r.returncode == 0, r.stderr
    drops = re.findall(r"retrying without (\S+)", r.stderr)
    assert drops == ["CKA_ALLOWED_MECHANISMS", "CKA_DERIVE=false"], r.stderr
    assert "C_GenerateKey: CKR_GENERAL_ERROR" in r.stderr
    # Judged fit all the same, and said unpinned.
    assert "seal       aes-gcm" in r.stdout, r.stdout
    assert "not pinned" in r.stderr, r.stderr
    k = tool(ftoken, "keys", "--module", MODULE, "--pin-file",
             ftoken.pin_file, "pkcs11:token=kms;object=strict1")
    assert re.search(r"strict1 .* yes ", k.stdout), k.stdout


def test_keygen_rsa_drops_until_accepted(ftoken, faults):
    faults.set("C_GenerateKeyPair CKR_TEMPLATE_INCONSISTENT 3")
    r = keygen(ftoken, "strictrsa", "--type", "rsa", "--bits", "2048")
    assert r.returncode == 0, r.stderr
    drops = re.findall(r"retrying without (.+)$", r.stderr, re.M)
    assert drops == ["CKA_ALLOWED_MECHANISMS (private key)",
                     "CKA_ALLOWED_MECHANISMS (public key)",
                     "CKA_DERIVE=false (public key)"], r.stderr
    assert "seal       rsa-oaep" in r.stdout, r.stdout


def test_keygen_token_refusal_is_exit_1(ftoken, faults):
    """A token that refuses every template: exit 1 (a token error, not
    usage), naming the PKCS#11 call, and no key is left behind."""
    faults.set("C_GenerateKey CKR_GENERAL_ERROR")
    r = keygen(ftoken, "never")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "C_GenerateKey: CKR_GENERAL_ERROR" in r.stderr, r.stderr
    assert "after dropping every optional attribute" in r.stderr, r.stderr
    faults.clear()
    k = tool(ftoken, "keys", "--module", MODULE, "--pin-file",
             ftoken.pin_file, "pkcs11:token=kms;object=never")
    assert "(no keys)" in k.stdout, k.stdout


def test_keygen_without_aes_generation(ftoken, faults):
    """A token that cannot generate AES keys (tpm2-pkcs11): the message
    says how to make one another way, exit 1."""
    faults.set("C_GenerateKey CKR_FUNCTION_NOT_SUPPORTED")
    r = keygen(ftoken, "tpmish")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "does not generate AES keys" in r.stderr, r.stderr
    assert "--type rsa" in r.stderr and "own tool" in r.stderr, r.stderr
    assert "retrying" not in r.stderr, r.stderr


def test_keygen_on_ecb_only_token(tmp_path):
    """A token with AES-ECB as its only AES path (as a TPM, a YubiHSM or
    p11-kit remoting): keygen without --type makes a key the daemon
    seals with by RFC 5649 on the token's ECB."""
    tok = str(tmp_path / "ecb")
    os.makedirs(tok)
    from conftest import MKTOKEN, Token
    import subprocess
    subprocess.run(["sh", MKTOKEN, tok, "--no-gcm", "--no-kwp"], check=True,
                   capture_output=True, timeout=60)
    t = Token(tok)
    r = tool(t, "keygen", "--module", MODULE, "--pin-file", t.pin_file,
             "pkcs11:token=kms;object=e2")
    assert r.returncode == 0, r.stderr
    assert "seal       aes-kwp/ecb" in r.stdout, r.stdout
    assert "key_id_of  AES-ECB" in r.stdout, r.stdout
    s = tool(t, "selftest", "--module", MODULE, "--pin-file", t.pin_file,
             "--key", t.uri("e2"))
    assert s.returncode == 0 and "aes-kwp/ecb" in s.stdout, s.stdout
