"""Packaging and deployment: the man page against the real flags, `make
install` honouring PREFIX and DESTDIR, the Dockerfiles against what `make
install` produces and what the binary links, the systemd unit through
`systemd-analyze verify`, and the conf/ samples against each other."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import REPO, binary

MAN = os.path.join(REPO, "docs", "p11kms.8")
UNIT = os.path.join(REPO, "conf", "p11kms.service")
CONF = os.path.join(REPO, "conf", "p11kms.conf")
DOCKERFILES = [os.path.join(REPO, "docker", f)
               for f in ("Dockerfile", "Dockerfile.softhsm")]
SUBCOMMANDS = ("keygen", "keys", "audit-verify", "init-token", "status",
               "reload")
# Daemon flags that are not settings, so not lines of a config file.
NOT_IN_CONF = {"--config", "--help", "--version"}
# What a runtime image must never carry.
BUILD_TOOLS = re.compile(r"^(gcc|g\+\+|cpp|clang|cc|make|binutils|"
                         r"build-essential|pkg-config|protobuf-c-compiler|"
                         r".*-dev)(:.*)?$")


def run_help(*args):
    r = subprocess.run([binary(), *args, "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, "p11kms %s --help: %s" % (" ".join(args),
                                                         r.stderr)
    return r.stdout


def help_flags(text):
    """Long flags of the option list of a --help text: the first flag of an
    indented line ("  -k, --key URI", "      --workers N")."""
    flags = set()
    for line in text.splitlines():
        m = re.match(r"^ {1,8}(?:-\w, )?(--[a-z][a-z0-9-]*)", line)
        if m:
            flags.add(m.group(1))
    return flags


def man_text():
    with open(MAN) as f:
        return f.read()


def man_sections(text):
    """{".SH NAME" or ".SS name": [lines]} of the roff source."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith((".SH ", ".SS ")):
            cur = line
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return out


def unroff(s):
    return s.replace("\\-", "-").replace("\\fB", "").replace(
        "\\fI", "").replace("\\fR", "").replace("\\fP", "")


def man_item_flags(lines):
    """Long flags in the tag lines of the .TP items of a section."""
    flags = set()
    for i, line in enumerate(lines):
        if line.strip() == ".TP" and i + 1 < len(lines):
            flags |= set(re.findall(r"--[a-z][a-z0-9-]*",
                                    unroff(lines[i + 1])))
    return flags


def section(secs, prefix):
    hits = [k for k in secs if k.startswith(prefix)]
    assert len(hits) == 1, "man page: want one section %r, have %r" % (
        prefix, list(secs))
    return secs[hits[0]]


# --------------------------------------------------------------------------
# man page


def test_man_page_documents_every_daemon_flag():
    want = help_flags(run_help())
    assert {"--key", "--socket", "--ops-listen"} <= want, want
    have = man_item_flags(section(man_sections(man_text()), ".SH OPTIONS"))
    assert want - have == set(), \
        "in p11kms --help but not in p11kms(8) OPTIONS: %s" % sorted(
            want - have)
    assert have - want == set(), \
        "in p11kms(8) OPTIONS but not in p11kms --help: %s" % sorted(
            have - want)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_man_page_documents_every_subcommand_flag(cmd):
    want = help_flags(run_help(cmd))
    assert want, "p11kms %s --help lists no flags" % cmd
    have = man_item_flags(section(man_sections(man_text()),
                                  ".SS p11kms %s " % cmd))
    assert want == have, "p11kms %s: --help %s, man page %s" % (
        cmd, sorted(want), sorted(have))


def test_man_page_selftest_takes_daemon_flags():
    # selftest's --help is the daemon's; the man page says so.
    assert help_flags(run_help("selftest")) >= help_flags(run_help())
    lines = section(man_sections(man_text()), ".SS p11kms selftest")
    assert "daemon" in unroff(" ".join(lines))


def test_man_page_mentions_only_real_flags():
    real = help_flags(run_help())
    for cmd in SUBCOMMANDS + ("selftest",):
        real |= help_flags(run_help(cmd))
    said = set(re.findall(r"--[a-z][a-z0-9-]*", unroff(man_text())))
    assert said - real == set(), "p11kms(8) mentions unknown flags: %s" % (
        sorted(said - real))


def test_man_page_renders_cleanly():
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian package groff-base)")
    r = subprocess.run(["groff", "-man", "-ww", "-z", MAN],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# --------------------------------------------------------------------------
# make install


def make_env():
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)
    return env


def make(*args):
    """make in the repository against the binary under test, never
    rebuilding it (-o): the test checks installation, not compilation."""
    build = os.path.dirname(binary())
    rel = os.path.relpath(build, REPO)
    if not rel.startswith(".."):
        build = rel
    cmd = ["make", "--no-print-directory", "-C", REPO, "BUILD=" + build,
           "-o", os.path.join(build, "p11kms"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=make_env())
    assert r.returncode == 0, "%s\n%s%s" % (" ".join(cmd), r.stdout,
                                            r.stderr)
    return r


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """make install DESTDIR=<tmp> PREFIX=/usr, as the Dockerfile does."""
    root = str(tmp_path_factory.mktemp("destdir"))
    make("install", "DESTDIR=" + root, "PREFIX=/usr")
    return root


INSTALLED = {
    "usr/sbin/p11kms": 0o755,
    "usr/share/man/man8/p11kms.8": 0o644,
    "usr/lib/systemd/system/p11kms.service": 0o644,
    "usr/share/doc/p11kms/README.md": 0o644,
    "usr/share/doc/p11kms/SECURITY.md": 0o644,
    "usr/share/doc/p11kms/audit.md": 0o644,
    "usr/share/doc/p11kms/examples/p11kms-audit.logrotate": 0o644,
    "usr/share/doc/p11kms/examples/p11kms.conf": 0o644,
    "usr/share/doc/p11kms/examples/encryption-config-v1.yaml": 0o644,
    "usr/share/doc/p11kms/examples/encryption-config-v2.yaml": 0o644,
    "usr/share/doc/p11kms/examples/softhsm2.conf": 0o644,
    "usr/share/doc/p11kms/examples/kubeadm/p11kms.yaml": 0o644,
    "usr/share/doc/p11kms/examples/prometheus/p11kms-alerts.yaml": 0o644,
    "usr/share/doc/p11kms/examples/prometheus/p11kms-alerts.test.yaml": 0o644,
    "usr/share/doc/p11kms/examples/grafana/p11kms-dashboard.json": 0o644,
}


def test_install_layout(staged):
    for rel, mode in INSTALLED.items():
        path = os.path.join(staged, rel)
        assert os.path.isfile(path), "make install did not produce /" + rel
        assert os.stat(path).st_mode & 0o7777 == mode, \
            "/%s has mode %o, want %o" % (rel, os.stat(path).st_mode & 0o7777,
                                          mode)
    # Nothing outside PREFIX (in particular nothing in /etc).
    assert sorted(os.listdir(staged)) == ["usr"], os.listdir(staged)
    r = subprocess.run([os.path.join(staged, "usr/sbin/p11kms"), "--version"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "p11kms" in r.stdout
    with open(os.path.join(staged, "usr/lib/systemd/system/p11kms.service")) as f:
        assert "ExecStart=/usr/sbin/p11kms " in f.read()


def test_install_honours_prefix_and_uninstall(tmp_path):
    root = str(tmp_path)
    make("install", "DESTDIR=" + root, "PREFIX=/opt/p11kms")
    base = os.path.join(root, "opt/p11kms")
    assert os.path.isfile(os.path.join(base, "sbin/p11kms"))
    assert os.path.isfile(os.path.join(base, "share/man/man8/p11kms.8"))
    unit = os.path.join(base, "lib/systemd/system/p11kms.service")
    with open(unit) as f:
        text = f.read()
    # The unit runs the binary where this PREFIX put it.
    assert "ExecStart=/opt/p11kms/sbin/p11kms " in text
    assert "/usr/sbin/p11kms" not in text
    make("uninstall", "DESTDIR=" + root, "PREFIX=/opt/p11kms")
    left = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert left == [], "make uninstall left %s" % left


# --------------------------------------------------------------------------
# Dockerfiles


def dockerfile_stages(path):
    """[(from_line, [instruction lines])] with continuations joined."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def apt_packages(lines):
    pkgs = []
    for line in lines:
        for m in re.finditer(r"apt-get install ([^&;]*)", line):
            pkgs += [w for w in shlex.split(m.group(1))
                     if not w.startswith("-")]
    return pkgs


@pytest.mark.parametrize("path", DOCKERFILES, ids=os.path.basename)
def test_dockerfile_copies_what_make_install_produces(path, staged):
    stages = dockerfile_stages(path)
    assert len(stages) >= 2, "%s is not multi-stage" % path
    build_from, build = stages[0]
    assert re.match(r"FROM debian:12 AS build$", build_from, re.I), build_from
    assert any("make install" in l and "DESTDIR=/out" in l and
               "PREFIX=/usr" in l for l in build), \
        "build stage must run make install DESTDIR=/out PREFIX=/usr"
    copies = 0
    for _, lines in stages:
        for line in lines:
            if not line.upper().startswith("COPY "):
                continue
            words = shlex.split(line)[1:]
            from_build = any(w == "--from=build" for w in words)
            srcs = [w for w in words if not w.startswith("--")][:-1]
            for src in srcs:
                if from_build:
                    if not src.startswith("/out/"):
                        continue
                    rel = src[len("/out/"):].rstrip("/")
                    target = os.path.join(staged, rel)
                    assert os.path.exists(target), \
                        "%s copies %s, which make install DESTDIR=… " \
                        "PREFIX=/usr does not produce" % (
                            os.path.basename(path), src)
                    if src.endswith("/"):
                        assert os.path.isdir(target), src
                    copies += 1
                else:
                    assert os.path.exists(os.path.join(REPO, src)), \
                        "%s copies %s from the context: missing" % (
                            os.path.basename(path), src)
    assert copies > 0, "no COPY --from=build /out/... in %s" % path


# Top-level entries the image build does not need.
NOT_IN_IMAGE = {"tests", "docker", "pkg", "scripts", "var", ".git", ".ci",
                ".gitignore", ".clang-format", "TOKEN-NOTES.md"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=os.path.basename)
def test_build_stage_copies_every_source_directory(path):
    """A new source directory (or a file `make install` needs) that the
    build stage does not COPY would break the image build, which no test
    here can run: every top-level directory with sources, and every file
    make install reads, must be copied."""
    build = dockerfile_stages(path)[0][1]
    copied = set()
    for line in build:
        if line.upper().startswith("COPY ") and "--from" not in line:
            copied |= {w.rstrip("/") for w in shlex.split(line)[1:-1]
                       if not w.startswith("--")}
    need = {"Makefile"}
    for entry in os.listdir(REPO):
        full = os.path.join(REPO, entry)
        if entry in NOT_IN_IMAGE or entry.startswith("build"):
            continue
        if os.path.isdir(full) and any(
                f.endswith((".c", ".h", ".proto", ".mk", ".8", ".conf",
                            ".yaml", ".service"))
                for _, _, fs in os.walk(full) for f in fs):
            need.add(entry)
    with open(os.path.join(REPO, "mk", "install.mk")) as f:
        install = f.read()
    for word in re.findall(r"\b([A-Z][A-Z]+\.md)\b", install):
        need.add(word)
    assert need - copied == set(), "%s does not copy %s" % (
        os.path.basename(path), sorted(need - copied))


@pytest.mark.parametrize("path", DOCKERFILES, ids=os.path.basename)
def test_runtime_image_has_no_compilers_and_is_non_root(path):
    runtime_from, runtime = dockerfile_stages(path)[-1]
    assert runtime_from.lower().startswith("from debian:12-slim"), \
        runtime_from
    pkgs = apt_packages(runtime)
    tools = [p for p in pkgs if BUILD_TOOLS.match(p)]
    assert tools == [], "runtime stage installs build tools: %s" % tools
    users = [l.split(None, 1)[1] for l in runtime if l.upper().startswith(
        "USER ")]
    assert users, "runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), "runtime user is root"


def needed_packages(path):
    """Debian packages providing the shared libraries path links to
    directly (its DT_NEEDED entries)."""
    if shutil.which("readelf") is None or shutil.which("dpkg") is None:
        pytest.skip("readelf (binutils) or dpkg missing")
    r = subprocess.run(["readelf", "-d", path], capture_output=True,
                       text=True, timeout=30, check=True)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        r.stdout)
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    where = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    pkgs = {}
    for lib in needed:
        assert lib in where, "ldd cannot resolve %s" % lib
        cands = [where[lib], os.path.realpath(where[lib])]
        for c in list(cands):
            cands.append(c[4:] if c.startswith("/usr/") else "/usr" + c)
        for c in cands:
            d = subprocess.run(["dpkg", "-S", c], capture_output=True,
                               text=True, timeout=30)
            if d.returncode == 0:
                pkgs[lib] = d.stdout.split(":")[0].strip()
                break
        else:
            pytest.fail("no Debian package owns %s" % where[lib])
    return pkgs


@pytest.mark.parametrize("path", DOCKERFILES, ids=os.path.basename)
def test_runtime_image_has_every_linked_library(path):
    runtime = dockerfile_stages(path)[-1][1]
    have = set(apt_packages(runtime)) | {"libc6"}   # libc6: in the base
    needed = needed_packages(binary())
    if any(lib.startswith(("libasan", "libubsan")) for lib in needed):
        # The image is built without sanitizers; judge the plain build's
        # link list, less the sanitizer runtimes of this one.
        needed = {lib: pkg for lib, pkg in needed.items()
                  if not lib.startswith(("libasan", "libubsan"))}
    missing = {lib: pkg for lib, pkg in needed.items()
               if pkg not in have}
    assert missing == {}, \
        "%s: the binary links libraries whose packages the runtime stage " \
        "does not install: %s" % (os.path.basename(path), missing)


def test_softhsm_entrypoint_serves(tmp_path):
    """The demo image's entry point, run here: first start makes a token
    and a key, then the daemon serves on the socket."""
    for tool in ("softhsm2-util", "od"):
        if shutil.which(tool) is None:
            pytest.skip("%s missing" % tool)
    state = tmp_path / "state"
    state.mkdir()
    sock = str(tmp_path / "kms.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, P11KMS_STATE=str(state), P11KMS_SOCKET=sock,
               P11KMS_OPS="127.0.0.1:%d" % port,
               PATH=os.path.dirname(binary()) + ":" + os.environ["PATH"])
    log = open(str(tmp_path / "log"), "w+")
    p = subprocess.Popen(["sh", os.path.join(REPO, "docker",
                                             "softhsm-entrypoint.sh")],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(sock):
            assert p.poll() is None, open(log.name).read()
            time.sleep(0.1)
        assert os.path.exists(sock), open(log.name).read()
        assert oct(os.stat(str(state / "pin")).st_mode & 0o777) == "0o600"
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    text = open(log.name).read()
    assert "key_id" in text
    pin = open(str(state / "pin")).read().strip()
    assert pin not in text, "the demo printed its PIN"


# --------------------------------------------------------------------------
# systemd unit


REQUIRED_UNIT = [
    "User=p11kms", "RuntimeDirectory=p11kms", "RuntimeDirectoryMode=0700",
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
    "PrivateTmp=yes", "MemoryDenyWriteExecute=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "LockPersonality=yes", "SystemCallFilter=@system-service",
    "CapabilityBoundingSet=", "Type=notify", "WatchdogSec=30s",
    "ExecReload=/usr/sbin/p11kms reload --pid $MAINPID --config "
    "/etc/p11kms/p11kms.conf",
    "LimitCORE=0", "LimitMEMLOCK=infinity", "UMask=0077",
    "RestartPreventExitStatus=2",
    "SystemCallFilter=~@privileged", "DevicePolicy=closed",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
    "ProtectControlGroups=yes", "RestrictSUIDSGID=yes",
    "RestrictNamespaces=yes", "SystemCallArchitectures=native",
]


def test_unit_has_the_hardening():
    with open(UNIT) as f:
        lines = {l.strip() for l in f}
    missing = [d for d in REQUIRED_UNIT if d not in lines]
    assert missing == [], "conf/p11kms.service lacks %s" % missing


def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed: it comes with "
                    "Debian's systemd package")
    return path


def test_unit_passes_systemd_analyze_verify(staged, tmp_path):
    """The installed unit, with ExecStart pointing at the staged binary
    (verify checks it exists) and MANPATH at the staged man page (verify
    checks Documentation=man:p11kms(8) resolves)."""
    sa = systemd_analyze()
    with open(os.path.join(staged,
                           "usr/lib/systemd/system/p11kms.service")) as f:
        text = f.read()
    exe = os.path.join(staged, "usr/sbin/p11kms")
    unit = tmp_path / "p11kms.service"
    unit.write_text(text.replace("/usr/sbin/p11kms", exe))
    env = dict(os.environ, MANPATH=os.path.join(staged, "usr/share/man"),
               SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run([sa, "verify", str(unit)], capture_output=True,
                       text=True, timeout=60, env=env)
    out = (r.stdout + r.stderr).strip()
    # verify exits 0 on unknown keys and bad values, printing a warning:
    # any line about our unit is a failure.
    ours = [l for l in out.splitlines() if "p11kms" in l]
    assert r.returncode == 0 and ours == [], out


def test_unit_exposure_is_low(tmp_path):
    sa = systemd_analyze()
    unit = tmp_path / "p11kms.service"
    with open(UNIT) as f:
        unit.write_text(f.read())
    r = subprocess.run([sa, "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for p11kms\.service: ([0-9.]+)",
                  r.stdout + r.stderr)
    if m is None:
        pytest.skip("this systemd-analyze has no offline security check")
    assert float(m.group(1)) <= 2.5, r.stdout


# --------------------------------------------------------------------------
# conf/ samples


def test_sample_config_lists_every_option_and_parses(tmp_path):
    with open(CONF) as f:
        text = f.read()
    named = set(re.findall(r"^#? ?([a-z][a-z0-9-]*) = ", text, re.M))
    want = {f[2:] for f in help_flags(run_help()) - NOT_IN_CONF}
    assert want - named == set(), \
        "conf/p11kms.conf does not show %s" % sorted(want - named)
    assert named - want == set(), \
        "conf/p11kms.conf names unknown options %s" % sorted(named - want)
    # Every option is explained by a comment just above it (repeats of
    # the same option, like a second key line, share one).
    opt = re.compile(r"^#? ?([a-z][a-z0-9-]*) = ")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = opt.match(line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and opt.match(lines[j]) and \
                opt.match(lines[j]).group(1) == m.group(1):
            j -= 1
        assert j >= 0 and lines[j].startswith("#") and \
            not opt.match(lines[j]), "option without a comment: %s" % line
    # p11kms reads it (--help exits after the file is parsed)...
    r = subprocess.run([binary(), "--config", CONF, "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # ...and would refuse a broken one, so the check above means something.
    bad = tmp_path / "bad.conf"
    bad.write_text(text + "\nworkers = many\n")
    r = subprocess.run([binary(), "--config", str(bad), "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "workers" in r.stderr, r.stderr


def load_yaml(rel):
    yaml = pytest.importorskip("yaml", reason="python3-yaml not installed")
    with open(os.path.join(REPO, rel)) as f:
        return yaml.safe_load(f)


def norm_run(path):
    """/var/run is /run on Debian and in the images."""
    return re.sub(r"^/var/run/", "/run/", path)


def kms_provider(doc):
    assert doc["kind"] == "EncryptionConfiguration"
    return doc["resources"][0]["providers"][0]["kms"]


def test_samples_agree():
    v1 = kms_provider(load_yaml("conf/encryption-config-v1.yaml"))
    v2 = kms_provider(load_yaml("conf/encryption-config-v2.yaml"))
    assert v1["apiVersion"] == "v1" and v2["apiVersion"] == "v2"
    pod = load_yaml("conf/kubeadm/p11kms.yaml")
    c = [x for x in pod["spec"]["containers"] if x["name"] == "p11kms"][0]
    args = dict(a[2:].split("=", 1) for a in c["args"])
    sock = norm_run(args["socket"])
    with open(CONF) as f:
        conf_sock = re.search(r"^socket = (\S+)", f.read(), re.M).group(1)
    # One socket in all the samples.
    for endpoint in (v1["endpoint"], v2["endpoint"]):
        assert endpoint.startswith("unix://")
        assert norm_run(endpoint[len("unix://"):]) == sock
    assert norm_run(conf_sock) == sock
    # The socket directory is the shared hostPath.
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    sockdir = os.path.dirname(args["socket"])
    assert sockdir in mounts
    assert norm_run(vols[mounts[sockdir]]["hostPath"]["path"]) == \
        os.path.dirname(sock)
    # Probes hit the ops endpoint p11kms is told to serve, on loopback.
    host, port = args["ops-listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and pod["spec"]["hostNetwork"] is True
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        g = c[probe]["httpGet"]
        assert g["host"] == host and str(g["port"]) == port, probe
        paths[probe] = g["path"]
    assert paths["livenessProbe"] == "/livez"
    assert paths["readinessProbe"] == "/readyz"
    # Non-root, read-only root, nothing to escalate.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == \
        "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The image's user is the pod's user.
    uid = str(pod["spec"]["securityContext"]["runAsUser"])
    for path in DOCKERFILES:
        users = [l.split(None, 1)[1] for l in dockerfile_stages(path)[-1][1]
                 if l.upper().startswith("USER ")]
        assert users[-1].split(":")[0] == uid, path


# --------------------------------------------------------------------------
# SECURITY.md


def test_security_md_cites_real_tests():
    """Every `tests/...::name` (and `::name`, which continues the last file
    named) in SECURITY.md is a test that exists, so a claim cannot outlive
    the test behind it."""
    with open(os.path.join(REPO, "SECURITY.md")) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    cited, last, missing = 0, None, []
    for tok in re.findall(r"`([^`]+)`", text):
        m = re.fullmatch(r"(tests/[\w/.-]+)(?:::(\w+))?", tok)
        if m:
            last = m.group(1)
            name = m.group(2)
        elif re.fullmatch(r"::\w+", tok) and last is not None:
            name = tok[2:]
        else:
            continue
        path = os.path.join(REPO, last)
        if not os.path.exists(path):
            missing.append(last)
            continue
        if name is None:
            continue
        with open(path) as f:
            src = f.read()
        if path.endswith(".py"):
            ok = re.search(r"^def %s\(" % name, src, re.M)
        else:
            ok = re.search(r"cmocka_unit_test\w*\(%s\b" % name, src)
        cited += 1
        if not ok:
            missing.append("%s::%s" % (last, name))
    assert missing == [], "SECURITY.md cites missing tests: %s" % missing
    assert cited >= 40, "SECURITY.md names only %d tests" % cited


# --------------------------------------------------------------------------
# compiler hardening


def test_binary_hardening_check():
    """hardening-check (devscripts, installed by scripts/deps.sh) on the
    binary under test: PIE, stack protector, RELRO, BIND_NOW, and FORTIFY
    except in a sanitizer build (the Makefile drops _FORTIFY_SOURCE there,
    as ASan replaces those functions). Its "Control flow integrity" reads
    the linked binary's IBT/SHSTK property, which the linker sets only when
    every input has it, and Debian 12's crt1.o/crti.o do not: our objects
    are checked instead (test_objects_have_cf_protection)."""
    tool = shutil.which("hardening-check")
    if tool is None:
        pytest.skip("hardening-check missing: sh scripts/deps.sh installs "
                    "devscripts")
    b = binary()
    r = subprocess.run([tool, b],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout
    want = ["Position Independent Executable: yes", "Stack protected: yes",
            "Read-only relocations: yes", "Immediate binding: yes"]
    if not os.path.basename(os.path.dirname(b)).startswith("build-"):
        want.append("Fortify Source functions: yes")
    missing = [w for w in want if w not in out]
    assert missing == [], "hardening-check %s lacks %s:\n%s" % (b, missing,
                                                                out)


def test_hardening_flags_survive_user_cflags(tmp_path):
    """make CFLAGS=... (as a packager does) keeps the hardening flags."""
    # A plain build's flags, whatever build runs this test (make test in
    # a SANITIZE build exports SANITIZE and MAKEFLAGS).
    env = {k: v for k, v in os.environ.items()
           if k not in ("SANITIZE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
                        "BUILD", "CFLAGS", "LDFLAGS")}
    r = subprocess.run(["make", "-n", "-B", "V=1", "CFLAGS=-O1 -g",
                        "BUILD=" + str(tmp_path / "b"),
                        str(tmp_path / "b" / "plugin" / "log.o")],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=env)
    line = [l for l in r.stdout.splitlines() if "plugin/log.c" in l]
    assert line, r.stdout + r.stderr
    for flag in ("-O1", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
                 "-fstack-clash-protection", "-fcf-protection", "-fPIE"):
        assert flag in line[0].split(), "%s missing from: %s" % (flag,
                                                                 line[0])


def test_objects_have_cf_protection():
    """-fcf-protection: every object of the binary under test carries the
    x86 IBT and SHSTK properties (readelf -n)."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf missing")
    build = os.path.dirname(binary())
    objs = [os.path.join(d, f) for sub in ("plugin", "pkcs11", "gen")
            for d, _, fs in os.walk(os.path.join(build, sub))
            for f in fs if f.endswith(".o")]
    assert objs, "no objects under %s" % build
    bad = []
    for o in objs:
        r = subprocess.run(["readelf", "-n", o], capture_output=True,
                           text=True, timeout=30)
        if not re.search(r"x86 feature: IBT, SHSTK", r.stdout):
            bad.append(os.path.relpath(o, build))
    assert bad == [], "built without -fcf-protection: %s" % sorted(bad)
