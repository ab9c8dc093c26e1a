"""A client of the daemon's ops endpoint (--ops-listen): waiting for it and
scraping it. The HTTP client and the strict Prometheus text parser are in
tests/lib/p11kmstest.py, re-exported here."""

import os
import sys
import time

import pytest

# The client and the parser live in the shared test library.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))
from p11kmstest import SAMPLE, free_port, http, http_unix, parse_metrics  # noqa: F401,E402


def wait_ops(d, port, timeout=10.0):
    """Waits for the ops endpoint; skips when this build does not serve
    one (the daemon runs but never logged the endpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return http(port, "/livez")
        except OSError:
            if "ops endpoint" not in d.stderr() and time.monotonic() > \
                    deadline - timeout + 3:
                pytest.skip("p11kms accepts --ops-listen but does not serve "
                            "it yet (plugin/main.c must call ops_start)")
            time.sleep(0.1)
    raise AssertionError("ops endpoint on port %d never answered; stderr:\n%s"
                         % (port, d.stderr()))


def scrape(port):
    status, headers, body = http(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)
