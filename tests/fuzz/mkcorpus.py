#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets: tests/fuzz/corpus/NAME/.

    /usr/bin/python3 tests/fuzz/mkcorpus.py [NAME...]

Deterministic: the same files on every run. Seeds are named seed-*;
inputs libFuzzer found (make fuzz FUZZ_MERGE=1) and crash reproducers
(crash-*) live beside them and are left alone. Needs python3-h2's hpack
(Debian python3-hpack). Request seeds use the placeholders fuzz_request.c
replaces with this run's key_id, key reference and a sealed envelope.
"""

import os
import struct
import sys

import hpack

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- fuzz_request.c's placeholders and flag byte ----
KEYID_PH = b"@@p11kms-fuzz-key-id-32-chars@@@"
KEYREF_PH = b"@@fuzz-keyref16@"
ENV_PH = b"@@p11kms-fuzz-envelope@@".ljust(79, b"#")
assert len(KEYID_PH) == 32 and len(KEYREF_PH) == 16
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHUNK_ALL, CHUNK_1, CHUNK_3, CHUNK_10, CHUNK_64 = 7, 0, 1, 2, 3


def flags(preface_by_harness=True, chunk=CHUNK_ALL):
    return bytes([(1 if preface_by_harness else 0) | chunk << 1])


# ---- HTTP/2 frames ----
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, \
    GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20


def frame(ftype, fl, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, fl]) + \
        struct.pack(">I", sid) + payload


def settings(*pairs):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v)
                                          for k, v in pairs))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def grpc_msg(msg, compressed=0, length=None):
    return struct.pack(">BI", compressed,
                       len(msg) if length is None else length) + msg


# ---- protobuf (proto3 wire format, by hand) ----
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def encrypt_req(pt, uid=b"uid-1"):
    return field(1, pt) + field(2, uid)


def decrypt_req(ct, key_id=KEYID_PH, annotations=None, uid=b"uid-2"):
    if annotations is None:
        annotations = [(b"version.p11kms.io", b"1")]
    out = field(1, ct) + field(2, uid) + field(3, key_id)
    for k, v in annotations:
        out += field(4, field(1, k) + field(2, v))
    return out


PATH = "/v2.KeyManagementService/"


def v1_version(v=b"v1beta1"):
    return field(1, v)


def v1_encrypt(pt, v=b"v1beta1"):
    return field(1, v) + field(2, pt)


def v1_decrypt(ct, v=b"v1beta1"):
    return field(1, v) + field(2, ct)


def path_of(method):
    """"Encrypt" -> v2; "v1/Encrypt" -> v1beta1."""
    if method.startswith("v1/"):
        return "/v1beta1.KeyManagementService/" + method[3:]
    return PATH + method


class Conn:
    """Client bytes of one connection; one HPACK encoder per connection."""

    def __init__(self, preface=False, client_settings=True):
        self.enc = hpack.Encoder()
        self.out = PREFACE if preface else b""
        if client_settings:
            self.out += settings((2, 0), (4, 65535)) + SETTINGS_ACK
        self.sid = 1

    def headers(self, sid, method="Status", extra=(), end_stream=False,
                hdrs=None, fl=END_HEADERS):
        if hdrs is None:
            hdrs = [(":method", "POST"), (":scheme", "http"),
                    (":path", path_of(method)), (":authority", "localhost"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers")] + list(extra)
        block = self.enc.encode(hdrs)
        self.out += frame(HEADERS, fl | (END_STREAM if end_stream else 0),
                          sid, block)
        return block

    def data(self, sid, payload, end_stream=True):
        self.out += frame(DATA, END_STREAM if end_stream else 0, sid,
                          payload)

    def call(self, method, msg, extra=(), split=0):
        sid = self.sid
        self.sid += 2
        self.headers(sid, method, extra)
        body = grpc_msg(msg)
        if split:
            for i in range(0, len(body), split):
                self.data(sid, body[i:i + split],
                          end_stream=i + split >= len(body))
        else:
            self.data(sid, body)
        return sid

    def raw(self, b):
        self.out += b

    def goaway(self, last=0, code=0):
        self.out += frame(GOAWAY, 0, 0, struct.pack(">II", last, code))


def env_bad_tag():
    """A well-formed envelope naming this run's key: the tag fails."""
    return bytes([1, 1]) + KEYREF_PH + bytes([12]) + bytes(12) + bytes(48)


def request_seeds():
    s = {}
    dek = bytes(range(32))

    c = Conn()
    c.call("Status", b"")
    s["status"] = flags() + c.out

    c = Conn(preface=True)
    c.call("Status", b"")
    s["status-own-preface-chunk10"] = flags(False, CHUNK_10) + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(dek), extra=[("grpc-timeout", "5S")])
    s["encrypt"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(dek), split=7)
    s["encrypt-split-data-chunk64"] = flags(True, CHUNK_64) + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(ENV_PH))
    s["decrypt-ok"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(env_bad_tag()))
    s["decrypt-bad-tag"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(ENV_PH, key_id=b"0" * 32))
    s["decrypt-other-key-id"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(b"\x01\x01" + bytes(40)))
    s["decrypt-unknown-keyref"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(ENV_PH, annotations=[]))
    s["decrypt-no-annotation"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(ENV_PH, annotations=[
        (b"version.p11kms.io", b"1"), (b"other", b"x")]))
    s["decrypt-extra-annotation"] = flags() + c.out

    c = Conn()
    c.call("Decrypt", decrypt_req(b"\x02garbage", key_id=b""))
    s["decrypt-bad-envelope"] = flags() + c.out

    # Every method on one connection, then a clean GOAWAY.
    c = Conn()
    c.call("Status", b"")
    c.call("Encrypt", encrypt_req(b"k" * 512, uid=b"u" * 300))
    c.call("Decrypt", decrypt_req(ENV_PH))
    c.goaway(5)
    s["all-methods-goaway"] = flags() + c.out

    # KMS v1beta1 on the same socket.
    c = Conn()
    c.call("v1/Version", v1_version())
    c.call("v1/Encrypt", v1_encrypt(dek))
    c.call("v1/Decrypt", v1_decrypt(ENV_PH))
    s["v1-all-methods"] = flags() + c.out

    c = Conn()
    c.call("v1/Version", v1_version(b"v2"))
    c.call("v1/Encrypt", v1_encrypt(b""))
    c.call("v1/Decrypt", v1_decrypt(env_bad_tag()))
    c.call("v1/Decrypt", v1_decrypt(ENV_PH, v=b""))
    s["v1-refused"] = flags() + c.out

    # Interleaved streams: headers of all, then the bodies.
    c = Conn()
    for sid, m in ((1, "Encrypt"), (3, "Status"), (5, "Decrypt")):
        c.headers(sid, m)
    c.data(5, grpc_msg(decrypt_req(ENV_PH)))
    c.data(1, grpc_msg(encrypt_req(dek)))
    c.data(3, grpc_msg(b""))
    s["interleaved"] = flags() + c.out

    # More calls than the pool queues, some with short deadlines.
    c = Conn()
    for i in range(24):
        c.call("Encrypt", encrypt_req(dek),
               extra=[("grpc-timeout", "%du" % (50 + 20 * i))])
    s["many-short-deadlines"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(dek), extra=[("grpc-timeout", "1n")])
    s["deadline-passed"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(dek), extra=[("grpc-timeout", "1x")])
    s["timeout-malformed"] = flags() + c.out

    # Refused requests.
    c = Conn()
    c.call("Encrypt", encrypt_req(b""))
    s["encrypt-empty"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(b"x" * 513))
    s["encrypt-too-big"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", b"\x0a\xff\xff\xff\xff\x0f")
    s["encrypt-bad-protobuf"] = flags() + c.out

    c = Conn()
    c.call("Nope", b"")
    s["unknown-method"] = flags() + c.out

    c = Conn()
    c.headers(1, hdrs=[(":method", "GET"), (":scheme", "http"),
                       (":path", PATH + "Status"),
                       (":authority", "x"),
                       ("content-type", "application/grpc")],
              end_stream=True)
    s["get"] = flags() + c.out

    c = Conn()
    c.headers(1, hdrs=[(":method", "POST"), (":scheme", "http"),
                       (":path", PATH + "Status"), (":authority", "x"),
                       ("content-type", "application/json")])
    c.data(1, grpc_msg(b""))
    s["content-type"] = flags() + c.out

    c = Conn()
    c.headers(1, "Status", end_stream=True)
    s["no-body"] = flags() + c.out

    c = Conn()
    c.headers(1, "Status")
    c.data(1, grpc_msg(b"", compressed=1))
    s["compressed"] = flags() + c.out

    c = Conn()
    c.headers(1, "Encrypt")
    c.data(1, grpc_msg(encrypt_req(dek)) + grpc_msg(b""))
    s["two-messages"] = flags() + c.out

    c = Conn()
    c.headers(1, "Encrypt")
    c.data(1, grpc_msg(encrypt_req(dek), length=1000))
    s["short-message"] = flags() + c.out

    c = Conn()
    c.headers(1, "Encrypt")
    for _ in range(3):
        c.data(1, b"\0" * 1000, end_stream=False)
    c.data(1, b"")
    s["over-max-request"] = flags() + c.out

    # Stream-level and connection-level events.
    c = Conn()
    c.headers(1, "Encrypt")
    c.data(1, grpc_msg(encrypt_req(dek))[:10], end_stream=False)
    c.raw(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    c.call("Status", b"")
    s["rst-mid-body"] = flags() + c.out

    c = Conn()
    c.call("Encrypt", encrypt_req(dek))
    c.raw(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    s["rst-after-end"] = flags() + c.out

    c = Conn()
    c.headers(1, "Encrypt")
    c.data(1, grpc_msg(encrypt_req(dek)), end_stream=False)
    c.headers(1, hdrs=[("x-trailer", "1")], end_stream=True)
    s["client-trailers"] = flags() + c.out

    c = Conn()
    block = c.enc.encode([(":method", "POST"), (":scheme", "http"),
                          (":path", PATH + "Status"), (":authority", "x"),
                          ("content-type", "application/grpc")])
    c.raw(frame(HEADERS, 0, 1, block[:5]) +
          frame(CONTINUATION, END_HEADERS, 1, block[5:]))
    c.data(1, grpc_msg(b""))
    s["continuation"] = flags() + c.out

    c = Conn()
    c.raw(frame(PING, 0, 0, b"12345678"))
    c.raw(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
    c.raw(frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16)))
    c.raw(settings((1, 0), (3, 1), (5, 16384), (6, 100)))
    c.call("Status", b"")
    s["ping-window-priority"] = flags() + c.out

    c = Conn()
    c.raw(frame(HEADERS, END_HEADERS | PADDED | PRIO, 1,
                bytes([4]) + struct.pack(">IB", 0, 200) +
                c.enc.encode([(":method", "POST"), (":scheme", "http"),
                              (":path", PATH + "Status"),
                              (":authority", "x"),
                              ("content-type", "application/grpc+proto")]) +
                bytes(4)))
    c.raw(frame(DATA, END_STREAM | PADDED, 1, bytes([3]) +
                grpc_msg(b"") + bytes(3)))
    s["padded-priority"] = flags() + c.out

    # Protocol errors: the server answers GOAWAY and closes.
    s["bad-preface"] = flags(False) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    c = Conn()
    c.raw(frame(DATA, 0, 1, b"x"))
    s["data-idle-stream"] = flags() + c.out
    c = Conn()
    c.raw(frame(HEADERS, END_HEADERS, 2, b"\x82"))
    s["even-stream-id"] = flags() + c.out
    c = Conn()
    c.raw(frame(PUSH_PROMISE, END_HEADERS, 1, bytes(4)))
    s["push-promise"] = flags() + c.out
    s["empty-after-preface"] = flags() + b""
    return s


# ---- envelopes ----
def envelope_seeds():
    kr = bytes(range(0x10, 0x20))
    s = {}
    s["gcm"] = bytes([1, 1]) + kr + bytes([12]) + bytes(range(12)) + \
        bytes(range(48))
    s["gcm-one-byte-body"] = bytes([1, 1]) + kr + bytes([12]) + \
        bytes(12) + b"\x00"
    s["no-iv"] = bytes([1, 1]) + kr + bytes([0]) + b"body"
    s["iv-16"] = bytes([1, 2]) + kr + bytes([16]) + bytes(16) + b"x"
    s["iv-17"] = bytes([1, 1]) + kr + bytes([17]) + bytes(17) + b"x"
    s["iv-past-end"] = bytes([1, 1]) + kr + bytes([12]) + bytes(5)
    s["empty-body"] = bytes([1, 1]) + kr + bytes([12]) + bytes(12)
    s["max-len"] = bytes([1, 1]) + kr + bytes([12]) + bytes(12) + \
        b"b" * (1024 - 31)
    s["over-max-len"] = s["max-len"] + b"b"
    s["format-2"] = bytes([2]) + s["gcm"][1:]
    s["short"] = bytes([1, 1]) + kr
    s["empty"] = b""
    return s


# ---- flags and config files ----
def config_seeds():
    def argv(*words):
        return b"\0".join(w.encode() if isinstance(w, str) else w
                          for w in words)

    def withfile(words, text):
        return argv(*words) + b"\xff" + text.encode()

    key = "pkcs11:token=kms;object=kek1;type=secret-key"
    s = {}
    s["minimal"] = argv("--key", key)
    s["all-flags"] = argv(
        "-s", "@p11kms", "-k", key, "-k",
        "pkcs11:token=kms;object=kek0;type=secret-key", "-m",
        "/usr/lib/softhsm/libsofthsm2.so", "-p", "/etc/p11kms/pin",
        "--workers", "4", "--max-inflight", "100", "--probe-interval",
        "30", "--grace", "0", "--kms-version", "v2beta1",
        "--max-request-bytes", "1024", "--log-level", "debug",
        "--mechanism", "aes-gcm", "--ops-listen", "127.0.0.1:9090",
        "--log-format", "json")
    s["equals-and-abbrev"] = argv("--key=" + key, "--sock=/run/x.sock",
                                  "--work=256", "--log-l=warn")
    s["short-joined"] = argv("-k" + key, "-s/tmp/k.sock")
    s["help"] = argv("-h")
    s["version"] = argv("--version")
    s["no-key"] = argv("--socket", "/run/kms.sock")
    s["missing-value"] = argv("--key")
    s["unknown-flag"] = argv("--key", key, "--frobnicate")
    s["unexpected-arg"] = argv("--key", key, "extra")
    s["double-dash"] = argv("--key", key, "--", "-s")
    s["bad-number"] = argv("--key", key, "--workers", "0x10")
    s["number-range"] = argv("--key", key, "--grace", "601",
                             "--probe-interval", "99999999999999999999")
    s["bad-words"] = argv("--key", key, "--kms-version", "v1",
                          "--log-level", "loud")
    s["empty-socket"] = argv("--key", key, "-s", "@")
    s["too-many-keys"] = argv(*sum((["-k", key] for _ in range(17)), []))
    s["uri-pin-value"] = argv("--key", key + "?pin-value=1234")
    s["uri-pin-in-path"] = argv("--key", "pkcs11:token=kms;pin-value=1234;"
                                "PIN-SOURCE=file:/x;object=a")
    s["uri-pin-source"] = argv("--key", key + "?pin-source=file:%2Fetc"
                               "%2Fpin&module-name=softhsm2")
    s["uri-slot-id"] = argv("--key", "pkcs11:slot-id=0;object=kek1")
    s["uri-unknown-attr"] = argv("--key", "pkcs11:token=kms;color=blue")
    s["uri-percent"] = argv("--key", "pkcs11:token=k%6Ds;object=%00%ff;"
                            "id=%01%02;model=;manufacturer=a%20b?"
                            "module-path=/usr/lib/x.so")
    s["uri-not-pkcs11"] = argv("--key", "file:///etc/passwd", "-k",
                               "pkcs11:", "-k", "")
    s["file"] = withfile(["-s", "/tmp/override.sock"],
                         "# p11kms config\n\nkey = " + key + "\n"
                         "socket = /run/p11kms/kms.sock\n"
                         "workers = 2\r\n  log-level\t=\tinfo  \n"
                         "kms-version = v2\n")
    s["file-keys-replaced"] = withfile(["--key", key],
                                       "key = pkcs11:object=a\n"
                                       "key = pkcs11:object=b\n")
    s["file-bad-line"] = withfile([], "key " + key + "\n")
    s["file-unknown-name"] = withfile([], "colour = blue\n")
    s["file-no-value"] = withfile([], "key =\n")
    s["file-config-inside"] = withfile([], "config = other.conf\n")
    s["file-flag-only"] = withfile([], "help = 1\n")
    s["file-bad-value"] = withfile([], "key = " + key + "\ngrace = -1\n")
    s["file-nul"] = argv() + b"\xffkey = a\0b\n"
    s["file-missing"] = argv("-c", "no-such-file.conf")
    return s


def write(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.unlink(os.path.join(d, f))
    for k, v in seeds.items():
        with open(os.path.join(d, "seed-" + k), "wb") as fp:
            fp.write(v)
    print("%s: %d seeds, %d bytes" % (name, len(seeds),
                                      sum(len(v) for v in seeds.values())))


def main():
    gens = {"request": request_seeds, "envelope": envelope_seeds,
            "config": config_seeds}
    for name in sys.argv[1:] or gens:
        write(name, gens[name]())


if __name__ == "__main__":
    main()
