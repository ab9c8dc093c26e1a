"""The deployment files as an operator runs them: the static pod's optional
hostPaths, module environment, USB note and image loading, and the SoftHSM
demo's entry point doing a key rotation the way its README says (keygen,
an edit of its config file, p11kms reload)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import REPO, binary

MANIFEST = os.path.join(REPO, "conf", "kubeadm", "p11kms.yaml")
ENTRY = os.path.join(REPO, "docker", "softhsm-entrypoint.sh")


def manifest():
    yaml = pytest.importorskip("yaml", reason="python3-yaml not installed")
    with open(MANIFEST) as f:
        return yaml.safe_load(f)


def test_static_pod_optional_host_paths_do_not_fail_when_absent():
    vols = {v["name"]: v["hostPath"] for v in manifest()["spec"]["volumes"]
            if "hostPath" in v}
    # Only the plugin's own configuration must exist before the pod starts.
    for name, hp in vols.items():
        if name == "config":
            assert hp["type"] == "Directory", hp
        else:
            assert hp["type"] == "DirectoryOrCreate", (name, hp)
    assert {"pkcs11-module", "pkcs11-vendor-root",
            "pkcs11-vendor-config"} <= set(vols)


def test_static_pod_mounts_vendor_paths_where_the_node_has_them():
    # An absolute symlink resolves only when its target is mounted at the
    # same path as on the node.
    spec = manifest()["spec"]
    vols = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]
            if "hostPath" in v}
    c = spec["containers"][0]
    for m in c["volumeMounts"]:
        if m["name"].startswith("pkcs11-"):
            assert m["mountPath"] == vols[m["name"]], m
            assert m.get("readOnly") is True, m
    assert c["imagePullPolicy"] == "IfNotPresent"


def test_static_pod_documents_module_env_usb_and_image_import():
    text = open(MANIFEST).read()
    for want in ("SOFTHSM2_CONF", "ChrystokiConfigurationPath",
                 "/dev/bus/usb", "ctr -n k8s.io images import"):
        assert want in text, "the manifest does not mention %s" % want
    readme = open(os.path.join(REPO, "conf", "README.md")).read()
    assert "ctr -n k8s.io images import" in readme
    assert "cp -L" in readme, "conf/README.md: symlinked modules"


def test_softhsm_image_sets_softhsm2_conf():
    text = open(os.path.join(REPO, "docker", "Dockerfile.softhsm")).read()
    runtime = text.split("FROM debian:12-slim")[-1]
    assert re.search(r"^ENV SOFTHSM2_CONF=/var/lib/p11kms/softhsm2\.conf$",
                     runtime, re.M), "no ENV SOFTHSM2_CONF in the image"
    entry = open(ENTRY).read()
    assert "--key" not in entry.split("exec p11kms")[-1], \
        "the demo passes --key: a mounted config's keys would be ignored"


def test_softhsm_demo_rotates_with_keygen_and_reload(tmp_path):
    for tool in ("softhsm2-util", "od"):
        if shutil.which(tool) is None:
            pytest.skip("%s missing" % tool)
    state = tmp_path / "state"
    state.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    sock = str(run / "kms.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, P11KMS_STATE=str(state), P11KMS_SOCKET=sock,
               P11KMS_OPS="127.0.0.1:%d" % port,
               P11KMS_CONFIG=str(tmp_path / "none.conf"),
               PATH=os.path.dirname(binary()) + ":" + os.environ["PATH"])
    log = open(str(tmp_path / "log"), "w+")
    p = subprocess.Popen(["sh", ENTRY], env=env, stdout=log,
                         stderr=subprocess.STDOUT)
    conf = str(state / "p11kms.conf")
    # As `podman exec` would: the image's SOFTHSM2_CONF, the state files.
    xenv = dict(os.environ, SOFTHSM2_CONF=str(state / "softhsm2.conf"))

    def ctl(*a):
        return subprocess.run([binary(), *a], env=xenv, capture_output=True,
                              text=True, timeout=60)
    try:
        deadline = time.time() + 30
        while ctl("status", "--config", conf).returncode != 0:
            assert p.poll() is None, open(log.name).read()
            assert time.time() < deadline, open(log.name).read()
            time.sleep(0.2)
        old = ctl("status", "--config", conf, "--json").stdout
        r = ctl("keygen", "--module", "/usr/lib/softhsm/libsofthsm2.so",
                "--pin-file", str(state / "pin"),
                "pkcs11:token=kms;object=kek2")
        assert r.returncode == 0, r.stderr
        new_id = re.search(r"^key_id +(\S+)", r.stdout, re.M).group(1)
        text = open(conf).read()
        text = text.replace("key = pkcs11:token=kms;object=kek1",
                            "key = pkcs11:token=kms;object=kek2;"
                            "type=secret-key\n"
                            "key = pkcs11:token=kms;object=kek1")
        open(conf, "w").write(text)
        r = ctl("reload", "--config", conf)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "2 key(s), key_id=%s" % new_id in r.stdout, r.stdout
        assert new_id not in old
        st = ctl("status", "--config", conf)
        assert "key_id %s" % new_id in st.stdout, st.stdout
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    assert not os.path.exists(str(run / "p11kms.pid"))
