"""The fault-injecting PKCS#11 module (tests/faultmod) as the integration
tests drive it: where it is built, its control and counts files, and a
token whose daemons load it in front of SoftHSM."""

import glob
import os

from conftest import Token, fault_so, gcm_iv_rule

FAULT_SO = fault_so()


class Faults:
    """The control and counts files of one test."""

    def __init__(self, base):
        self.control = os.path.join(base, "fault.control")
        self.counts_path = os.path.join(base, "fault.counts")

    def set(self, text):
        """Replaces the rules atomically (new inode: the module sees it).
        Under P11KMS_TEST_GCM_IV the emulated form's rule stays first."""
        text = gcm_iv_rule() + text
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text.endswith("\n") or not text else text + "\n")
        os.rename(tmp, self.control)

    def clear(self):
        self.set("")

    def counts(self):
        """Calls per function, added up over every process that loaded
        the module (each token process writes COUNTS.pidPID too)."""
        d = {}
        per = glob.glob(glob.escape(self.counts_path) + ".pid*")
        for path in per or [self.counts_path]:
            try:
                with open(path) as f:
                    for line in f:
                        p = line.split()
                        if len(p) == 2 and p[1].isdigit():
                            d[p[0]] = d.get(p[0], 0) + int(p[1])
            except FileNotFoundError:
                pass
        return d

    def count(self, fn):
        return self.counts().get(fn, 0)


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
