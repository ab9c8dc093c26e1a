# make prom-check   the alert rules and their promtool unit tests
#                   (conf/prometheus), and the Grafana dashboard parses
#                   (conf/grafana); make check runs it. promtool comes with
#                   Debian's prometheus package (scripts/deps.sh --packaging).

.PHONY: prom-check

prom-check:
	$(E) PROMTOOL conf/prometheus
	$(Q)command -v promtool >/dev/null || { echo "prom-check: promtool" \
	    "is missing: sh scripts/deps.sh --packaging" >&2; exit 1; }
	$(Q)cd conf/prometheus && promtool check rules p11kms-alerts.yaml \
	    && promtool test rules p11kms-alerts.test.yaml
	$(Q)/usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); \
	    assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])' \
	    conf/grafana/p11kms-dashboard.json
