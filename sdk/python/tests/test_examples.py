"""The example controllers run under the real worker against a fake runtime with in-memory
backends, and their contracts declare what their code uses."""

import json
import os
import re
import shutil
import tempfile
import unittest

from .harness import EXAMPLES_DIR, FakeRuntime, fail, ok


class MemoryBackends:
    """Just enough db/http/secrets/queue/cache behaviour to run the examples."""

    def __init__(self, tables, secrets):
        self.tables = {name: [dict(r) for r in rows] for name, rows in tables.items()}
        self.secrets = secrets
        self.queues = {}
        self.cache = {}
        self.seen = set()

    @staticmethod
    def _match(row, where):
        for column, cond in (where or {}).items():
            if isinstance(cond, dict):
                op, value = cond["op"], cond["value"]
                actual = row.get(column)
                if not {">=": actual >= value, "<=": actual <= value, ">": actual > value,
                        "<": actual < value, "!=": actual != value}[op]:
                    return False
            elif row.get(column) != cond:
                return False
        return True

    def __call__(self, call):
        capability, op, args = call["capability"], call["op"], call["args"]
        self.seen.add((capability, op))
        if capability == "db":
            if op == "raw":
                count = sum(1 for rows in self.tables.values() for r in rows if r.get("qty") == 3)
                return ok([{"n": count}])
            if args["table"] not in self.tables:
                return fail("E2004", "table %s is not in the contract" % args["table"],
                            {"allow_with": "db:read: { tables: [%s] }" % args["table"]})
            rows = self.tables[args["table"]]
            if op in ("query", "query_one"):
                found = [r for r in rows if self._match(r, args.get("where"))]
                if "columns" in args:
                    found = [{c: r[c] for c in args["columns"]} for r in found]
                return ok(found[0] if found else None) if op == "query_one" else ok(found)
            if op == "insert":
                rows.append(dict(args["values"]))
                return ok({"rows_affected": 1})
            hit = [r for r in rows if self._match(r, args["where"])]
            if op == "update":
                for r in hit:
                    r.update(args["values"])
            else:
                for r in hit:
                    rows.remove(r)
            return ok({"rows_affected": len(hit)})
        if capability == "http":
            body = {"id": "in_1MtHbELkdIwHu7ix", "echo": args.get("json")}
            return ok({"status": 200, "headers": {"content-type": "application/json"},
                       "text": json.dumps(body), "json": body})
        if capability == "secrets":
            return ok(self.secrets[args["key"]])
        if capability == "queue":
            queue = self.queues.setdefault(args["queue"], [])
            if op == "publish":
                queue.append({"id": "m%d" % len(queue), "message": args["message"], "attempt": 1})
                return ok({"id": queue[-1]["id"]})
            if op == "receive":
                return ok(queue[: args.get("max", 1)])
            queue[:] = [m for m in queue if m["id"] != args["id"]]
            return ok(None)
        if capability == "cache":
            if op == "set":
                self.cache[args["key"]] = args["value"]
                return ok(None)
            if op == "get":
                return ok(self.cache.get(args["key"]))
            self.cache.pop(args["key"], None)
            return ok(None)
        raise AssertionError("unexpected call %r" % call)


def load_input(name):
    with open(os.path.join(EXAMPLES_DIR, name, "input.json"), encoding="utf-8") as f:
        return json.load(f)


def declared_capabilities(name):
    """Capability names listed in an example's contract.yaml (a line-based read: no YAML parser
    in the standard library)."""
    with open(os.path.join(EXAMPLES_DIR, name, "contract.yaml"), encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r"^\s*-\s*([a-z]+:[a-z]+)\b", text, re.MULTILINE))


class ExamplesTest(unittest.TestCase):
    def run_example(self, name, backends=None, temp_dir=None):
        runtime = FakeRuntime(os.path.join(EXAMPLES_DIR, name))
        self.addCleanup(runtime.close)
        result, frames = runtime.run(load_input(name), answer=backends, request_id="req_example",
                                     temp_dir=temp_dir)
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 0, stderr)
        self.assertTrue(result["ok"], result)
        return result["output"], frames

    def test_every_example_has_its_files(self):
        for name in ("hello_world", "invoice_sync", "every_capability"):
            for file in ("contract.yaml", "controller.py", "input.json", "README.md"):
                self.assertTrue(os.path.isfile(os.path.join(EXAMPLES_DIR, name, file)), (name, file))

    def test_hello_world(self):
        output, frames = self.run_example("hello_world")
        self.assertEqual(output, {"greeting": "Hello, Ada!"})
        self.assertEqual([f["type"] for f in frames], ["log"])
        self.assertEqual(declared_capabilities("hello_world"), set())

    def test_invoice_sync(self):
        backends = MemoryBackends({"customers": [{"id": "cust_789", "name": "Acme"}]},
                                  {"STRIPE_KEY": "sk_test_123"})
        output, frames = self.run_example("invoice_sync", backends)
        self.assertEqual(output, {"sync_id": "in_1MtHbELkdIwHu7ix", "status": "completed",
                                  "request_id": "req_example"})
        calls = [f for f in frames if f["type"] == "call"]
        self.assertEqual(calls[-1]["args"]["headers"], {"Authorization": "Bearer sk_test_123"})
        self.assertEqual([f["name"] for f in frames if f["type"] == "metric"], ["invoice_sync_duration_seconds"])
        self.assertEqual(declared_capabilities("invoice_sync"), {"db:read", "http:egress", "secrets:read"})

    def test_invoice_sync_unknown_customer_fails(self):
        runtime = FakeRuntime(os.path.join(EXAMPLES_DIR, "invoice_sync"))
        self.addCleanup(runtime.close)
        result, _ = runtime.run(load_input("invoice_sync"), answer=MemoryBackends({"customers": []}, {}))
        self.assertEqual(result["error"]["code"], "E5001")
        self.assertIn("cust_789 not found", result["error"]["message"])

    def test_every_capability(self):
        temp = tempfile.mkdtemp(prefix="magic-example-")
        self.addCleanup(shutil.rmtree, temp, True)
        backends = MemoryBackends({"example_items": []}, {"EXAMPLE_SECRET": "s3cret"})
        output, frames = self.run_example("every_capability", backends, temp_dir=temp)
        self.assertEqual(output, {
            "request_id": "req_example",
            "db": {"inserted": 1, "updated": 1, "row": {"id": "item-1", "name": "widget", "qty": 3},
                   "rows": [{"id": "item-1", "qty": 3}], "raw_count_at_least_one": True, "deleted": 1},
            "http": {"status": 200, "json": {"id": "in_1MtHbELkdIwHu7ix", "echo": {"item_id": "item-1"}}},
            "secrets": {"length": 6},
            "queue": {"published": True, "received": {"item_id": "item-1", "event": "created"}, "attempt": 1},
            "cache": {"stored": {"qty": 3}, "after_delete": None},
            "fs": {"bytes_written": 18, "read_back": "hello from item-1\n"},
            "metrics": {"emitted": ["counter", "gauge", "histogram"]},
            "log": {"emitted": ["debug", "info", "warning", "error", "print"]},
        })
        self.assertNotIn("s3cret", json.dumps(output))
        ops = {(c, o) for c, o in backends.seen}
        self.assertEqual(ops, {
            ("db", "delete"), ("db", "insert"), ("db", "update"), ("db", "query_one"), ("db", "query"),
            ("db", "raw"), ("http", "request"), ("secrets", "get"), ("queue", "publish"),
            ("queue", "receive"), ("queue", "ack"), ("cache", "set"), ("cache", "get"), ("cache", "delete"),
        })
        self.assertEqual({f["kind"] for f in frames if f["type"] == "metric"}, {"counter", "gauge", "histogram"})
        self.assertEqual({f["level"] for f in frames if f["type"] == "log"}, {"debug", "info", "warning", "error"})
        self.assertEqual(declared_capabilities("every_capability"), {
            "db:read", "db:write", "db:rawsql", "http:egress", "secrets:read", "queue:publish",
            "queue:subscribe", "cache:read", "cache:write", "fs:temp",
        })


if __name__ == "__main__":
    unittest.main()
