"""The alert rules (conf/prometheus) and the Grafana dashboard
(conf/grafana) against a live daemon: every p11kms metric and every label
value they select on exists in its /metrics after ordinary traffic, and
the rules pass their promtool unit tests."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO
from opsclient import free_port, http, parse_metrics, wait_ops

RULES = os.path.join(REPO, "conf", "prometheus", "p11kms-alerts.yaml")
RULE_TESTS = os.path.join(REPO, "conf", "prometheus",
                          "p11kms-alerts.test.yaml")
DASHBOARD = os.path.join(REPO, "conf", "grafana", "p11kms-dashboard.json")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def rule_exprs():
    yaml = pytest.importorskip("yaml", reason="python3-yaml not installed")
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs():
    with open(DASHBOARD) as f:
        doc = json.load(f)
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in doc["templating"]["list"]
              if v["type"] == "query"]
    return exprs


def used(exprs):
    """{metric name} and {(label, value)} of the equality matchers and of
    each alternative of a =~ matcher, in PromQL expressions."""
    names, pairs = set(), set()
    for e in exprs:
        names |= set(re.findall(r"\b(p11kms_[a-z0-9_]+)", e))
        for label, op, val in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', e):
            if label in ("job", "instance") or "$" in val or op == "!=":
                continue
            for alt in val.split("|") if op == "=~" else [val]:
                pairs.add((label, alt))
    return names, pairs


@pytest.fixture(scope="module")
def live_metrics(shared, pb):
    """/metrics of a daemon after Status, Encrypt, Decrypt and a reload."""
    import signal
    import time
    from conftest import Client, Daemon
    port = free_port()
    d = Daemon(shared.token, os.path.join(shared.base, "mon"),
               extra=["--ops-listen", "127.0.0.1:%d" % port])
    d.start(pb)
    try:
        wait_ops(d, port)
        c = Client(d, pb)
        st = c.status()
        r = c.encrypt(os.urandom(32))
        c.decrypt(r.ciphertext, r.key_id, r.annotations)
        c.close()
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded:" not in d.stderr():
            assert time.monotonic() < deadline, d.stderr()
            time.sleep(0.05)
        time.sleep(1.2)   # the gauges are published every second
        text = http(port, "/metrics")[2]
    finally:
        d.stop()
    assert st.healthz == "ok"
    return text


def metric_names(text):
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s).group(0)
            for s in parse_metrics(text)}


@pytest.mark.parametrize("what", ["alerts", "dashboard"])
def test_every_metric_used_exists(live_metrics, what):
    exprs = rule_exprs() if what == "alerts" else dashboard_exprs()
    names, pairs = used(exprs)
    assert names, "no p11kms metric found in the %s" % what
    have = metric_names(live_metrics)
    missing = sorted(n for n in names if n not in have)
    assert missing == [], "%s use metrics /metrics lacks: %s" % (what,
                                                                   missing)
    absent = sorted("%s=%s" % p for p in pairs
                    if '%s="%s"' % p not in live_metrics)
    assert absent == [], "%s select label values /metrics lacks: %s" % (
        what, absent)


def test_histogram_rules_use_histograms(live_metrics):
    # histogram_quantile over a name that is not a _bucket series silently
    # gives nothing.
    for e in rule_exprs() + dashboard_exprs():
        for m in re.findall(r"histogram_quantile\([^,]+,.*?\b(p11kms_\w+)",
                            e, re.S):
            assert m.endswith("_bucket"), e
            assert ("# TYPE %s histogram" % m[:-len("_bucket")]) in \
                live_metrics, m


def test_dashboard_is_a_grafana_dashboard():
    with open(DASHBOARD) as f:
        doc = json.load(f)
    assert doc["uid"] == "p11kms" and doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for want in ("code", "latency", "pkcs#11", "token up", "pool", "reload"):
        assert want in titles, "no %s panel: %s" % (want, titles)


def test_alert_rules_pass_their_promtool_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; "
                    "make check installs it and runs make prom-check)")
    for args in (["check", "rules", RULES], ["test", "rules", RULE_TESTS]):
        r = subprocess.run([promtool, *args], capture_output=True,
                           text=True, timeout=120,
                           cwd=os.path.dirname(RULES))
        assert r.returncode == 0, r.stdout + r.stderr
    names = {a for a in re.findall(r"alert: (\w+)", open(RULES).read())}
    tested = set(re.findall(r"alertname: (\w+)", open(RULE_TESTS).read()))
    assert names == tested, "alerts without a test: %s" % (names - tested)
