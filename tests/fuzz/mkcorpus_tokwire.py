#!/usr/bin/python3
"""Writes the seed corpus of fuzz_tokwire (tests/fuzz/corpus/tokwire/):
one file per message type and direction, plus the malformed cases the
unit tests name (oversized, truncated, wrong version, wrong id)."""
import os
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "corpus", "tokwire")


def s(text):
    b = text.encode()
    return struct.pack(">H", len(b)) + b


def frame(typ, rid, payload, version=1):
    body = struct.pack(">BBQ", version, typ, rid) + payload
    return struct.pack(">I", len(body)) + body


def req(rid, op=0, pt=b"dek" * 10, key=""):
    return frame(1, rid, struct.pack(">BQ", op, 0) + s(key)
                 + struct.pack(">H", len(pt)) + pt)


def reply(rid, status=0, out=b"\x01" * 40, key="ab" * 16, detail=""):
    return frame(18, rid, struct.pack(">i", status)
                 + struct.pack(">H", len(out)) + out + s(key) + s(detail)
                 + struct.pack(">QQ", 1, 2))


def ready(nkeys=1):
    p = struct.pack(">I", 42) + s("/run/p11kms/kms.sock") + s("v2") + s("")
    p += s("") + struct.pack(">QIIi", 65536, 10, 5, 2) + s("logfmt")
    p += struct.pack(">IB", 1024, 1) + s("")
    p += struct.pack(">II", 2, 1024)
    p += s("software slot: CPU count") + s("kms") + s("0123")
    p += struct.pack(">BQB", 0, 0, nkeys)
    for i in range(nkeys):
        p += s("%032x" % i) + s("token 'kms' object 'kek1'") + s("aes-gcm")
        p += s("") + s("aes-gcm,aes-kwp")
    return frame(16, 0, p)


SEEDS = {
    "to-token-req-seal": b"\x00" + req(1 << 16),
    "to-token-req-open": b"\x00" + req(2 << 16 | 1, op=1, key="ab" * 16),
    "to-token-two-reqs": b"\x00" + req(1 << 16) + req(2 << 16 | 1, op=2),
    "to-token-bad-op": b"\x00" + req(1 << 16, op=9),
    "to-token-reply-wrong-dir": b"\x00" + reply(1 << 16),
    "to-front-reply": b"\x01" + reply(1 << 16),
    "to-front-two-replies": b"\x01" + reply(2 << 16 | 1) + reply(1 << 16),
    "to-front-wrong-id": b"\x01" + reply(3 << 16 | 1),
    "to-front-same-id-twice": b"\x01" + reply(1 << 16) + reply(1 << 16),
    "to-front-reply-error": b"\x01" + reply(1 << 16, status=-4, out=b"",
                                             detail="C_Encrypt: CKR_DEVICE_REMOVED"),
    "to-front-ready": b"\x01" + ready(),
    "to-front-ready-16": b"\x01" + ready(16),
    "to-front-failed": b"\x01" + frame(17, 0, struct.pack(">i", -8) + s("PIN")),
    "to-front-stats": b"\x01" + frame(19, 0, struct.pack(">III", 2, 1, 3)),
    "to-front-calls": b"\x01" + frame(20, 0, b"\x02" + s("C_Encrypt")
                                      + struct.pack(">QQ", 0, 40000)
                                      + s("C_EncryptInit")
                                      + struct.pack(">QQ", 0, 1000)),
    "to-front-oversized": b"\x01" + struct.pack(">I", 32769) + b"\x01\x12",
    "to-front-truncated": b"\x01" + reply(1 << 16)[:-5],
    "to-front-version": b"\x01" + frame(18, 1 << 16, b"", version=2),
    "to-front-trailing": b"\x01" + frame(19, 0, struct.pack(">IIIB", 1, 1, 1, 0)),
    "to-front-out-over-cap": b"\x01" + frame(18, 1 << 16, struct.pack(">i", 0)
                                             + struct.pack(">H", 1025) + b"\0" * 1025),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
