"""The fault-injecting PKCS#11 module (tests/faultmod) as the integration
tests drive it: where it is built, its control and counts files, and a
token whose daemons load it in front of SoftHSM."""

import os

from conftest import Token, fault_so, gcm_iv_rule
import p11kmstest

FAULT_SO = fault_so()


class Faults(p11kmstest.Faults):
    """The control and counts files of one test (tests/lib/p11kmstest.py).
    Under P11KMS_TEST_GCM_IV the emulated form's rule stays first."""

    def __init__(self, base):
        super().__init__(base, prefix=gcm_iv_rule)


class FaultToken(Token):
    """A token whose daemons get the fault module's environment."""

    def __init__(self, tok, faults):
        super().__init__(tok.dir, token=tok.token, pin=tok.pin)
        self.faults = faults

    def env(self):
        e = super().env()
        e["P11KMS_FAULT_CONTROL"] = self.faults.control
        e["P11KMS_FAULT_COUNTS"] = self.faults.counts_path
        return e
