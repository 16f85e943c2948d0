import os

from magic import Controller, contract

TABLE = "example_items"
QUEUE = "magic_example_events"


@contract("./contract.yaml")
class EveryCapability(Controller):
    """Uses every capability once and returns what each call gave back.

    Everything in the summary is deterministic for a given input (no generated ids, no
    timestamps, never the secret itself), so two runs on different backends can be compared
    with a plain equality check.
    """

    async def execute(self, input: dict) -> dict:
        item_id = input["item_id"]
        return {
            "request_id": self.request_id,
            "db": await self.use_db(item_id),
            "http": await self.use_http(input["url"], item_id),
            "secrets": await self.use_secrets(),
            "queue": await self.use_queue(item_id),
            "cache": await self.use_cache(item_id),
            "fs": self.use_temp_dir(item_id),
            "metrics": self.use_metrics(),
            "log": self.use_log(item_id),
        }

    async def use_db(self, item_id: str) -> dict:
        # db:write: start from a clean slate so the example can run again with the same id.
        await self.db.delete(TABLE, where={"id": item_id})
        inserted = await self.db.insert(TABLE, {"id": item_id, "name": "widget", "qty": 2})
        updated = await self.db.update(TABLE, {"qty": 3}, where={"id": item_id})
        # db:read
        row = await self.db.query_one(TABLE, where={"id": item_id})
        rows = await self.db.query(
            TABLE,
            where={"id": item_id, "qty": {"op": ">=", "value": 1}},
            columns=["id", "qty"],
            order_by="-qty",
            limit=10,
        )
        # db:rawsql (no parameters: placeholder syntax differs between SQLite and PostgreSQL)
        raw = await self.db.raw(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE qty = 3", [])
        deleted = await self.db.delete(TABLE, where={"id": item_id})
        return {
            "inserted": inserted["rows_affected"],
            "updated": updated["rows_affected"],
            "row": row,
            "rows": rows,
            "raw_count_at_least_one": bool(raw) and raw[0]["n"] >= 1,
            "deleted": deleted["rows_affected"],
        }

    async def use_http(self, url: str, item_id: str) -> dict:
        response = await self.http.post(
            url, json={"item_id": item_id}, headers={"X-Example": "every_capability"}, timeout=5
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        return {"status": response.status, "json": body}

    async def use_secrets(self) -> dict:
        secret = await self.secrets.get("EXAMPLE_SECRET")
        # Never return or log a secret; its length is enough to show it arrived.
        return {"length": len(secret)}

    async def use_queue(self, item_id: str) -> dict:
        message_id = await self.queue.publish(QUEUE, {"item_id": item_id, "event": "created"})
        received = await self.queue.receive(QUEUE, wait=2, max=10)
        ours = [m for m in received if m["id"] == message_id]
        for message in ours:
            await self.queue.ack(QUEUE, message["id"])
        return {
            "published": bool(message_id),
            "received": ours[0]["message"] if ours else None,
            "attempt": ours[0]["attempt"] if ours else None,
        }

    async def use_cache(self, item_id: str) -> dict:
        key = f"every:{item_id}"
        await self.cache.set(key, {"qty": 3}, ttl=60)
        stored = await self.cache.get(key)
        await self.cache.delete(key)
        after_delete = await self.cache.get(key)
        return {"stored": stored, "after_delete": after_delete}

    def use_temp_dir(self, item_id: str) -> dict:
        path = os.path.join(self.temp_dir, f"{item_id}.txt")
        with open(path, "w", encoding="utf-8") as f:
            written = f.write(f"hello from {item_id}\n")
        with open(path, encoding="utf-8") as f:
            read_back = f.read()
        return {"bytes_written": written, "read_back": read_back}

    def use_metrics(self) -> dict:
        self.metrics.counter("every_capability_runs_total", labels={"example": "yes"})
        self.metrics.gauge("every_capability_last_qty", 3)
        self.metrics.histogram("every_capability_duration_seconds", self.elapsed_ms / 1000)
        return {"emitted": ["counter", "gauge", "histogram"]}

    def use_log(self, item_id: str) -> dict:
        self.log.debug("debug line", item_id=item_id)
        self.log.info("every capability used", item_id=item_id)
        self.log.warning("a warning line", item_id=item_id)
        self.log.error("an error line (not a failure)", item_id=item_id)
        print("print() output becomes an info log line")
        return {"emitted": ["debug", "info", "warning", "error", "print"]}
