"""`fill`: write 8 MiB into a 1M temp dir. `swallow`: the same, but catch the error and return
normally (the runtime still sees the full temp dir: E3003). `remember`/`recall`: leave a file
in the temp dir and look for the previous execution's file."""
import os

from magic import Controller, contract


@contract("./contract.yaml")
class HostileTmpFiller(Controller):
    async def execute(self, input):
        tmp = self.temp_dir
        mode = input.get("mode", "fill")
        if mode == "swallow":
            try:
                with open(os.path.join(tmp, "big"), "wb") as f:
                    for _ in range(8):
                        f.write(b"x" * (1 << 20))
                        f.flush()
            except OSError:
                return {"swallowed": True}
            return {"swallowed": False}
        if mode == "fill":
            with open(os.path.join(tmp, "big"), "wb") as f:
                for _ in range(8):
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            return {"wrote_mib": 8}
        found = sorted(os.listdir(tmp))
        with open(os.path.join(tmp, "left-behind"), "w") as f:
            f.write("state")
        return {"temp_dir": str(tmp), "found": found}
