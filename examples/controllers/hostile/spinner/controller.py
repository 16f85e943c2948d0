"""Spins forever, ignoring every signal it can."""
import signal

from magic import Controller, contract


@contract("./contract.yaml")
class HostileSpinner(Controller):
    async def execute(self, input):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        n = 0
        while True:
            n += 1
