# make install / make uninstall, honouring PREFIX and DESTDIR:
#
#   make install                              under /usr/local
#   make install DESTDIR=/tmp/root PREFIX=/usr  staged, as packages and the
#                                               Dockerfile do
#   make install INSTALL_STRIP=-s             strip the binary
#
# Layout (PREFIX=/usr):
#   /usr/sbin/p11kms                          the daemon and its subcommands
#   /usr/share/man/man8/p11kms.8              p11kms(8)
#   /usr/lib/systemd/system/p11kms.service    unit, ExecStart -> $(SBINDIR)
#   /usr/share/doc/p11kms/{README,SECURITY,audit}.md
#   /usr/share/doc/p11kms/examples/           conf/ samples (p11kms.conf,
#                                             EncryptionConfigurations,
#                                             kubeadm/p11kms.yaml, softhsm2.conf,
#                                             p11kms-audit.logrotate,
#                                             prometheus/ alert rules and
#                                             their tests, grafana/
#                                             dashboard)
# Nothing goes to /etc: the site's configuration is never overwritten.

# Included before the Makefile's own `all`: keep it the default goal.

PREFIX		?= /usr/local
SBINDIR		?= $(PREFIX)/sbin
MANDIR		?= $(PREFIX)/share/man
DOCDIR		?= $(PREFIX)/share/doc/p11kms
SYSTEMDUNITDIR	?= $(PREFIX)/lib/systemd/system
INSTALL		?= install
INSTALL_STRIP	?=

INSTALL_EXAMPLES = conf/p11kms.conf conf/encryption-config-v1.yaml \
		   conf/encryption-config-v2.yaml conf/softhsm2.conf \
		   conf/README.md conf/p11kms-audit.logrotate

.PHONY: install uninstall

install: $(BUILD)/p11kms
	$(E) INSTALL '$(DESTDIR)$(PREFIX)'
	$(Q)$(INSTALL) -d -m 0755 '$(DESTDIR)$(SBINDIR)' \
	    '$(DESTDIR)$(MANDIR)/man8' '$(DESTDIR)$(SYSTEMDUNITDIR)' \
	    '$(DESTDIR)$(DOCDIR)/examples/kubeadm' \
	    '$(DESTDIR)$(DOCDIR)/examples/prometheus' \
	    '$(DESTDIR)$(DOCDIR)/examples/grafana'
	$(Q)$(INSTALL) $(INSTALL_STRIP) -m 0755 $(BUILD)/p11kms \
	    '$(DESTDIR)$(SBINDIR)/p11kms'
	$(Q)$(INSTALL) -m 0644 docs/p11kms.8 '$(DESTDIR)$(MANDIR)/man8/p11kms.8'
	$(Q)sed 's|/usr/sbin/p11kms|$(SBINDIR)/p11kms|g' conf/p11kms.service \
	    >'$(DESTDIR)$(SYSTEMDUNITDIR)/p11kms.service.tmp'
	$(Q)chmod 0644 '$(DESTDIR)$(SYSTEMDUNITDIR)/p11kms.service.tmp'
	$(Q)mv -f '$(DESTDIR)$(SYSTEMDUNITDIR)/p11kms.service.tmp' \
	    '$(DESTDIR)$(SYSTEMDUNITDIR)/p11kms.service'
	$(Q)$(INSTALL) -m 0644 README.md SECURITY.md docs/audit.md \
	    '$(DESTDIR)$(DOCDIR)/'
	$(Q)$(INSTALL) -m 0644 $(INSTALL_EXAMPLES) '$(DESTDIR)$(DOCDIR)/examples/'
	$(Q)$(INSTALL) -m 0644 conf/kubeadm/p11kms.yaml \
	    '$(DESTDIR)$(DOCDIR)/examples/kubeadm/'
	$(Q)$(INSTALL) -m 0644 conf/prometheus/p11kms-alerts.yaml \
	    conf/prometheus/p11kms-alerts.test.yaml \
	    '$(DESTDIR)$(DOCDIR)/examples/prometheus/'
	$(Q)$(INSTALL) -m 0644 conf/grafana/p11kms-dashboard.json \
	    '$(DESTDIR)$(DOCDIR)/examples/grafana/'

uninstall:
	$(E) UNINST '$(DESTDIR)$(PREFIX)'
	$(Q)rm -f '$(DESTDIR)$(SBINDIR)/p11kms' \
	    '$(DESTDIR)$(MANDIR)/man8/p11kms.8' \
	    '$(DESTDIR)$(SYSTEMDUNITDIR)/p11kms.service'
	$(Q)rm -rf '$(DESTDIR)$(DOCDIR)'
