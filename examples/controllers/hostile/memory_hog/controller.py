"""Allocates far past its 64Mi memory limit (touching every page)."""
from magic import Controller, contract


@contract("./contract.yaml")
class HostileMemoryHog(Controller):
    async def execute(self, input):
        hoard = []
        for _ in range(1024):
            hoard.append(bytearray(b"x" * (1 << 20)))
        return {"allocated_mib": len(hoard)}
