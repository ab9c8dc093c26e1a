#!/usr/bin/python3
"""The token matrix: p11kms against real PKCS#11 implementations.

  /usr/bin/python3 tests/tokens/matrix.py [--p11kms BIN] [--expected TSV]
      [--out FILE] [--only NAME,...]

For each token (tests/tokens/fixtures.py) a child process builds the token,
runs the column below and writes its cells as JSON; the parent gives each
child a hard time limit (its whole process group is killed past it), prints
the table, writes it to --out, compares every cell with --expected and exits
1 when any differs. The last line is "tokens: N passed, N failed" (N cells).

The cells of one token:
  keygen-aes  `p11kms keygen URI` (no --type), then `p11kms keys` lists the
              key as fit
  keygen-rsa  `p11kms keygen --type rsa URI`, listed as fit likewise
  mechanism   the mechanism `p11kms selftest` used with the serving key (the
              keygen AES key, else an AES key made by the token's tool, else
              the RSA key from keygen or the tool: the first one `keys`
              calls fit); `keys` must name the same mechanism for it
  serves-v2   the daemon on that key: v2 Status ok, Encrypt/Decrypt round trip
  serves-v1   v1beta1 Version and Encrypt/Decrypt round trip on the same daemon
  rotation    a second key of the same kind and origin, config [new, old],
              SIGHUP: Status key_id changes, old v2 and v1 ciphertexts still
              open, new ones carry the new key_id
A cell is "ok", "FAIL" or "skip"; mechanism holds the mechanism's name.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import fixtures  # noqa: E402

COLUMNS = ["keygen-aes", "keygen-rsa", "mechanism", "serves-v2", "serves-v1",
           "rotation"]
TOKENS = ["softhsm", "opencryptoki", "tpm2", "p11-kit-remote"]
# Seconds one token's child may take, set-up included, and one p11kms
# keygen/keys/selftest run; the environment may lower them (to try them).
COLUMN_TIMEOUT = int(os.environ.get("P11KMS_MATRIX_COLUMN_TIMEOUT", "240"))
CMD_TIMEOUT = int(os.environ.get("P11KMS_MATRIX_CMD_TIMEOUT", "60"))
RELOAD_TIMEOUT = 20       # SIGHUP to "reloaded:" in the log


# --------------------------------------------------------------------------
# one token (the child)


class Column:
    def __init__(self, fx, p11kms):
        self.fx = fx
        self.bin = p11kms
        self.cells = {c: ("skip", "not reached") for c in COLUMNS}
        self.log = []

    def set(self, col, state, note=""):
        self.cells[col] = (state, " ".join(note.split())[:160])

    def p11kms(self, args, timeout=CMD_TIMEOUT):
        """Runs a p11kms subcommand; returns (rc, stdout, stderr)."""
        cmd = [self.bin] + args
        try:
            r = subprocess.run(cmd, env=self.fx.env(), capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log.append("$ %s\n(timed out)" % " ".join(cmd))
            return 124, "", "timed out after %d s" % timeout
        self.log.append("$ %s\nrc=%d\n%s%s" % (" ".join(cmd), r.returncode,
                                               r.stdout, r.stderr))
        return r.returncode, r.stdout, r.stderr

    def common(self):
        return ["-m", self.fx.module, "-p", self.fx.pin_file]

    def keys(self):
        """{label: (fit, mechanisms-or-reason)} from `p11kms keys`."""
        rc, out, err = self.p11kms(["keys"] + self.common() +
                                   ["pkcs11:token=" + self.fx.token])
        if rc != 0:
            raise RuntimeError("p11kms keys exited %d: %s" % (rc, err.strip()[-300:]))
        rows = {}
        for line in out.splitlines()[1:]:
            f = line.split(None, 5)
            if len(f) >= 5 and f[4] in ("yes", "no"):
                rows[f[0]] = (f[4] == "yes", f[5] if len(f) > 5 else "")
        return rows

    def keygen(self, label, kind):
        args = ["keygen"] + self.common()
        if kind == "rsa":
            args += ["--type", "rsa"]
        rc, out, err = self.p11kms(args + [self.fx.uri(label, kind)])
        self.dropped = err.count("retrying without")
        return rc, (err.strip().splitlines() or [""])[-1] if rc else out

    def make_key(self, label, kind, col):
        """keygen cell for kind; returns how the key was made ("keygen",
        the tool's name) or None."""
        rc, msg = self.keygen(label, kind)
        if rc == 0:
            fit, why = self.keys().get(label, (False, "not listed by p11kms keys"))
            if fit:
                if self.dropped:
                    why += " (the token refused %d optional template " \
                        "attribute(s); keygen dropped them)" % self.dropped
                self.set(col, "ok", why)
                return "keygen"
            self.set(col, "FAIL", "made but not fit: " + why)
        elif "CKR_FUNCTION_NOT_SUPPORTED" in msg:
            self.set(col, "skip", "the token does not generate this key type "
                     "(C_GenerateKey: CKR_FUNCTION_NOT_SUPPORTED); made "
                     "with its own tool")
        else:
            self.set(col, "FAIL", msg.replace("p11kms: ", ""))
        try:
            return self.fx.tool_key(label, kind)
        except fixtures.FixtureError as e:
            self.log.append("tool key %s %s failed: %s" % (kind, label, e))
            return None

    def run(self):
        made = {}
        for kind, col in (("aes", "keygen-aes"), ("rsa", "keygen-rsa")):
            made[kind] = self.make_key("%s1" % kind, kind, col)
        listed = self.keys()
        serving = None
        skipped = []
        for kind in ("aes", "rsa"):
            label = "%s1" % kind
            if made[kind] is None:
                skipped.append("%s: no key" % kind)
                continue
            fit, why = listed.get(label, (False, "not listed"))
            if fit:
                serving = (kind, label, made[kind], why)
                break
            skipped.append("%s key (%s) not fit: %s" % (kind, made[kind],
                                                         why or "keys gives no reason"))
        if serving is None:
            for c in COLUMNS[2:]:
                self.set(c, "FAIL", "no key p11kms accepts; " + "; ".join(skipped))
            return
        kind, label, origin, mechs = serving
        note = "%s key by %s" % (kind.upper(), origin)
        if skipped:
            note += " (%s)" % "; ".join(skipped)
        self.mechanism(kind, label, mechs, note)
        self.serve(kind, label, origin)

    def mechanism(self, kind, label, mechs, note):
        rc, out, err = self.p11kms(["selftest"] + self.common() +
                                   ["-k", self.fx.uri(label, kind)])
        line = [l for l in out.splitlines() if l.startswith("key 0")]
        if rc != 0 or not line or " OK " not in line[0]:
            self.set("mechanism", "FAIL", "selftest exited %d: %s" % (
                rc, (line or err.strip().splitlines() or [""])[-1]))
            return
        mech = line[0].split()[3]
        if mech not in mechs.split(","):
            self.set("mechanism", "FAIL", "selftest used %s, keys says %s"
                     % (mech, mechs))
            return
        self.set("mechanism", mech, note)

    def serve(self, kind, label, origin):
        import grpc
        import conftest
        from test_rotation import Both, v1_stubs

        pb = conftest._generate_stubs()[:2]
        v1pb, _ = v1_stubs()
        work = tempfile.mkdtemp(prefix="p11kms-matrix-run-", dir=self.fx.dir)
        conf = os.path.join(work, "p11kms.conf")
        sock = os.path.join(work, "kms.sock")

        def write_conf(labels):
            with open(conf, "w") as f:
                f.write("module = %s\npin-file = %s\nprobe-interval = 1\n"
                        % (self.fx.module, self.fx.pin_file))
                for lb in labels:
                    f.write("key = %s\n" % self.fx.uri(lb, kind))

        write_conf([label])
        d = conftest.Daemon(self.fx, work, socket_=sock,
                            args=["--config", conf, "--socket", sock])
        c = None
        try:
            try:
                d.start(pb, timeout=30)
                c = Both(d, pb)
            except Exception as e:
                for col in ("serves-v2", "serves-v1", "rotation"):
                    self.set(col, "FAIL", "daemon did not serve: %s" % str(e)[:120])
                self.log.append("daemon stderr:\n" + d.stderr()[-3000:])
                return
            dek = os.urandom(32)
            try:
                st = c.status()
                assert st.healthz == "ok", "healthz %r" % st.healthz
                assert len(st.key_id) == 32, "key_id %r" % st.key_id
                old2 = c.enc2(dek)
                assert old2.key_id == st.key_id, "Encrypt key_id != Status key_id"
                assert c.dec2(old2) == dek, "v2 round trip returned other bytes"
                self.set("serves-v2", "ok", "key_id %s" % st.key_id[:8])
            except (AssertionError, grpc.RpcError) as e:
                self.set("serves-v2", "FAIL", _rpc_msg(e))
                old2 = None
            try:
                v = c.v1.Version(v1pb.VersionRequest(version="v1beta1"),
                                 timeout=conftest.RPC_TIMEOUT)
                assert v.version == "v1beta1", "Version %r" % v.version
                old1 = c.enc1(dek)
                assert c.dec1(old1) == dek, "v1 round trip returned other bytes"
                self.set("serves-v1", "ok")
            except (AssertionError, grpc.RpcError) as e:
                self.set("serves-v1", "FAIL", _rpc_msg(e))
                old1 = None
            self.rotate(kind, label, origin, d, c, write_conf, dek, old2, old1)
        finally:
            if c is not None:
                c.close()
            d.kill_quietly()
            rep = conftest.sanitizer_report(d.stderr())
            if rep:
                for col in ("serves-v2", "serves-v1", "rotation"):
                    self.set(col, "FAIL", "sanitizer report in the daemon's stderr")
                self.log.append(rep)
            self.log.append("daemon stderr:\n" + d.stderr()[-3000:])

    def rotate(self, kind, label, origin, d, c, write_conf, dek, old2, old1):
        import grpc
        new = "%s2" % kind
        try:
            if origin == "keygen":
                rc, msg = self.keygen(new, kind)
                assert rc == 0, "keygen of the second key: %s" % msg
            else:
                self.fx.tool_key(new, kind)
            k1 = c.status().key_id
            write_conf([new, label])
            before = d.stderr().count("reloaded:")
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while d.stderr().count("reloaded:") == before:
                assert "reload failed" not in d.stderr(), \
                    "reload failed: " + d.stderr().split("reload failed")[-1] \
                    .lstrip(' :,"')[:150]
                assert time.monotonic() < deadline, "no 'reloaded:' within %d s" \
                    % RELOAD_TIMEOUT
                time.sleep(0.05)
            st = c.status()
            assert st.key_id != k1 and len(st.key_id) == 32, \
                "Status key_id did not change (%s)" % st.key_id
            assert st.healthz == "ok", "healthz %r after reload" % st.healthz
            assert old2 is not None and c.dec2(old2) == dek, \
                "old v2 ciphertext no longer opens"
            assert old1 is not None and c.dec1(old1) == dek, \
                "old v1 ciphertext no longer opens"
            n2 = c.enc2(dek)
            assert n2.key_id == st.key_id, "new Encrypt carries the old key_id"
            assert c.dec2(n2) == dek and c.dec1(c.enc1(dek)) == dek, \
                "new key does not round trip"
            assert d.alive(), "daemon died"
            self.set("rotation", "ok", "%s -> %s" % (k1[:8], st.key_id[:8]))
        except (AssertionError, grpc.RpcError, fixtures.FixtureError) as e:
            why = _rpc_msg(e)
            if "reload failed" in why:      # does a fresh process see the key?
                try:
                    seen = new in self.keys()
                except RuntimeError:
                    seen = False
                why = ("%s; a fresh `p11kms keys` %s it" %
                       (why[:110], "lists" if seen else "does not list either"))
            self.set("rotation", "FAIL", why)


def _rpc_msg(e):
    try:
        return "%s: %s" % (e.code().name, e.details())
    except Exception:
        return str(e) or e.__class__.__name__


def child(name, p11kms, out):
    """Builds one token, runs its column, writes {cells, log} to out."""
    def on_alarm(signum, frame):
        raise TimeoutError("token %s: column exceeded %d s" % (name, max(1, COLUMN_TIMEOUT - 20)))
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, COLUMN_TIMEOUT - 20))    # the parent's is the backstop
    col = None
    result = {}
    try:
        with fixtures.FIXTURES[name]() as fx:
            col = Column(fx, p11kms)
            col.run()
        result = {"cells": col.cells, "log": col.log}
    except BaseException as e:
        why = "stopped: %s" % (str(e).splitlines() or [repr(e)])[0][:150]
        cells = col.cells if col else {}
        for c in COLUMNS:
            if c not in cells or cells[c][1] == "not reached":
                cells[c] = ("FAIL", why)
        result = {"cells": cells, "log": (col.log if col else []) +
                  [traceback.format_exc()]}
    finally:
        signal.alarm(0)
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


# --------------------------------------------------------------------------
# the matrix (the parent)


def read_expected(path):
    """{(token, column): (value, note)} from the TSV (see its header)."""
    exp = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            f3 = line.split("\t")
            if len(f3) < 3:
                raise SystemExit("%s:%d: want TOKEN<TAB>COLUMN<TAB>VALUE[<TAB>NOTE]"
                                 % (path, n))
            tok, col, val = (x.strip() for x in f3[:3])
            if col not in COLUMNS:
                raise SystemExit("%s:%d: unknown column %r" % (path, n, col))
            exp[(tok, col)] = (val, f3[3].strip() if len(f3) > 3 else "")
    return exp


def shm_segment_present(key):
    r = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, timeout=10)
    return key in r.stdout


def run_one(name, p11kms, tmp):
    out = os.path.join(tmp, name + ".json")
    argv = [sys.executable, os.path.abspath(__file__), "--column", name,
            "--p11kms", p11kms, "--json", out]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if name == "opencryptoki":
        argv = ["unshare", "-m", "-i", "--propagation", "private"] + argv
        env["P11KMS_IN_NAMESPACE"] = "1"
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        text, _ = p.communicate(timeout=COLUMN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        text, _ = p.communicate(timeout=10)
        text = (text or b"") + b"\n(killed after %d s)" % COLUMN_TIMEOUT
    leftover = False
    # A daemon's token processes exit on their own once it is gone (socket
    # EOF, PR_SET_PDEATHSIG): give them a moment. Whatever of that token
    # still runs after it is a teardown bug.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    try:
        os.killpg(p.pid, signal.SIGKILL)
        leftover = True
    except ProcessLookupError:
        pass
    secs = time.monotonic() - t0
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"cells": {c: ("FAIL", "the token's run wrote no result (exit %s)"
                             % p.returncode) for c in COLUMNS}, "log": []}
    res["log"].append(text.decode("utf-8", "replace")[-4000:])
    res["secs"] = secs
    res["leftover"] = leftover
    return res


def fmt_cell(state, note):
    return state if not note or state == "ok" else "%s(%s)" % (state, note)


def shown(tok, col, res, expected):
    """A cell as the grid shows it: its value, "(gap)" when it is what
    expected.tsv records as a known gap; a skip's reason is in the notes."""
    state, note = res["cells"][col]
    want, enote = expected.get((tok, col), ("", ""))
    if state == want and enote.startswith("gap:"):
        return state + " (gap)"
    if state == "skip":
        return "skip (see notes)"
    return state


def table(results, expected):
    grid = [["token"] + COLUMNS]
    for tok, res in results.items():
        grid.append([tok] + [shown(tok, c, res, expected) for c in COLUMNS])
    w = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    lines = ["  ".join(s.ljust(w[i]) for i, s in enumerate(r)).rstrip() for r in grid]
    lines.append("")
    lines.append("notes (observed; expectation notes in tests/tokens/expected.tsv):")
    for tok, res in results.items():
        for c in COLUMNS:
            state, note = res["cells"][c]
            enote = expected.get((tok, c), ("", ""))[1]
            if note or enote:
                lines.append("  %-15s %-11s %s%s" % (tok, c, note,
                                                     "  [%s]" % enote if enote else ""))
        lines.append("  %-15s %-11s %.1f s" % (tok, "time", res["secs"]))
    return "\n".join(lines)


def parent(args):
    p11kms = os.path.abspath(args.p11kms)
    if not os.access(p11kms, os.X_OK):
        print("matrix: %s is not an executable (make first)" % p11kms, file=sys.stderr)
        return 2
    os.environ["P11KMS"] = p11kms
    expected = read_expected(args.expected)
    names = args.only.split(",") if args.only else TOKENS
    shm_before = shm_segment_present(fixtures.OpenCryptoki.SHM_KEY)
    results = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p11kms-matrix-") as tmp:
        for name in names:
            print("== token %s" % name, flush=True)
            results[name] = run_one(name, p11kms, tmp)
            if args.verbose:
                print("\n".join(results[name]["log"]))
    passed = failed = 0
    diffs = []
    for tok, res in results.items():
        for c in COLUMNS:
            got = res["cells"][c][0]
            want = expected.get((tok, c))
            if want is None:
                diffs.append("%s %s: got %s, no expectation in %s"
                             % (tok, c, got, args.expected))
                failed += 1
            elif got != want[0]:
                diffs.append("%s %s: expected %s, got %s (%s)"
                             % (tok, c, want[0], got, res["cells"][c][1]))
                failed += 1
            else:
                passed += 1
        if res["leftover"]:
            diffs.append("%s: processes were left running after teardown "
                         "(killed now)" % tok)
            failed += 1
    if not shm_before and shm_segment_present(fixtures.OpenCryptoki.SHM_KEY):
        subprocess.run(["ipcrm", "-M", fixtures.OpenCryptoki.SHM_KEY], timeout=10)
        diffs.append("opencryptoki: its SysV shm segment %s leaked to the host "
                     "(removed now)" % fixtures.OpenCryptoki.SHM_KEY)
        failed += 1
    text = table(results, expected)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if diffs:
        print("\nDIFFERENCES from %s:" % os.path.relpath(args.expected, REPO))
        for d in diffs:
            print("  " + d)
        if not args.verbose:    # the logs of the tokens that differ
            for tok, res in results.items():
                if any(d.startswith(tok + " ") or d.startswith(tok + ":") for d in diffs):
                    print("\n-- log of %s (last commands)" % tok)
                    print("\n".join(res["log"][-6:])[-6000:])
    print("tokens: %d passed, %d failed (%.0f s)" % (passed, failed,
                                                     time.monotonic() - t0))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--p11kms", default=os.path.join(REPO, "build", "p11kms"))
    ap.add_argument("--expected", default=os.path.join(HERE, "expected.tsv"))
    ap.add_argument("--out")
    ap.add_argument("--only")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--column", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.column:
        return child(args.column, os.path.abspath(args.p11kms), args.json)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
