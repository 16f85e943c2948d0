from magic import Controller, contract


@contract("./contract.yaml")
class HelloWorld(Controller):
    """Greets the caller by name. Needs no capability."""

    async def execute(self, input: dict) -> dict:
        name = input["name"]
        self.log.info("greeting someone", name_length=len(name))
        return {"greeting": f"Hello, {name}!"}
