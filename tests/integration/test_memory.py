"""No plaintext remnants: after a thousand Encrypts and Decrypts of known
plaintexts, none of them is left in the daemon's memory, nor the PIN.

Reads the daemon's writable mappings through /proc/PID/mem (the tests run
as root; the daemon is not dumpable, which ptrace-attach rules follow, but
root with CAP_SYS_PTRACE may still read). Plaintexts pass through the read
buffers, nghttp2's buffers (its allocator wipes), protobuf-c's unpacking
(its allocator wipes), the worker's job and the reply buffers (wiped).
"""

import os
import re
import secrets

import pytest

from conftest import make_token

N = 1000
# A PIN long and random enough that finding it is no coincidence.
PIN = "p11kms-" + secrets.token_hex(12)


def writable_regions(pid):
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)",
                         line)
            if m is None:
                continue
            lo, hi, perms, name = (int(m.group(1), 16), int(m.group(2), 16),
                                   m.group(3), m.group(4))
            # Heap, stacks and anonymous memory; not the binary's or the
            # libraries' read-only text.
            if "w" not in perms or name.startswith("[v"):
                continue
            yield lo, hi, name


def dump(pid):
    chunks = []
    with open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for lo, hi, _ in writable_regions(pid):
            try:
                mem.seek(lo)
                chunks.append(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                pass        # a guard page, or a mapping that went away
    return b"\0".join(chunks)


@pytest.fixture
def mtoken(tmp_path):
    return make_token(str(tmp_path / "tok"), pin=PIN)


def test_no_plaintext_or_pin_in_memory(mtoken, spawn, client_for):
    if os.geteuid() != 0:
        pytest.skip("reading another process's memory needs root")
    d = spawn(mtoken)
    with open("/proc/%d/maps" % d.proc.pid) as f:
        if "libasan" in f.read():
            pytest.skip("AddressSanitizer reserves terabytes of shadow and "
                        "heap address space: the scan runs on the plain "
                        "build")
    c = client_for(d)
    pts = [b"PT%04d" % i + secrets.token_bytes(26) for i in range(N)]
    sealed = [c.encrypt(pt) for pt in pts]
    for pt, r in zip(pts, sealed):
        assert c.decrypt(r.ciphertext, r.key_id, r.annotations).plaintext == pt
    # The client can read the last answer before the daemon's loop, which
    # sent it, has wiped its output buffer (a loaded machine may pause it
    # right after send(2)). The loop answers this Status only after that.
    assert c.status().healthz == "ok"
    # Checked: the scan can find what is there (the key_id the daemon
    # keeps for Status is in its memory).
    image = dump(d.proc.pid)
    assert sealed[0].key_id.encode() in image, "the memory scan sees nothing"
    left = [i for i, pt in enumerate(pts) if pt in image]
    assert left == [], "%d of %d plaintexts still in the daemon's memory " \
        "(first: #%d)" % (len(left), N, left[0])
    assert PIN.encode() not in image, "the PIN is in the daemon's memory"
