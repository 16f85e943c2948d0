"""The worker as a real subprocess against a fake runtime (docs/protocol.md)."""

import struct
import unittest

from .harness import HELLO_CONTROLLER as HELLO
from .harness import FakeRuntime, fail, make_package, ok


class WorkerTest(unittest.TestCase):
    def start(self, source):
        runtime = FakeRuntime(make_package(self, source))
        self.addCleanup(runtime.close)
        return runtime

    def assert_clean_exit(self, runtime):
        code, stdout, stderr = runtime.finish()
        self.assertEqual(code, 0, stderr)
        self.assertEqual(stdout, "", "the worker must not write to its real stdout")
        return stderr

    # ---- success ----

    def test_hello_world_result(self):
        runtime = self.start(HELLO)
        result, frames = runtime.run({"name": "Ada"}, request_id="req_42")
        self.assertEqual(result, {"type": "result", "ok": True,
                                  "output": {"greeting": "Hello, Ada!", "request_id": "req_42"}})
        self.assertEqual(frames, [])
        # Exactly one result: the worker closes its end right after it.
        self.assertIsNone(runtime.recv())
        self.assert_clean_exit(runtime)

    def test_package_folder_is_left_untouched(self):
        import os
        folder = make_package(self, HELLO.replace("from magic import", "import helper\nfrom magic import"))
        with open(os.path.join(folder, "helper.py"), "w") as f:
            f.write("VALUE = 1\n")
        before = sorted(os.listdir(folder))
        runtime = FakeRuntime(folder)
        self.addCleanup(runtime.close)
        result, _ = runtime.run({"name": "x"})
        self.assertTrue(result["ok"], result)
        self.assert_clean_exit(runtime)
        self.assertEqual(sorted(os.listdir(folder)), before)

    def test_large_input_and_reply(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Big(Controller):
                async def execute(self, input):
                    value = await self.cache.get("k")
                    return {"input": len(input["blob"]), "reply": len(value)}
        """)
        blob = "x" * (10 * 1024 * 1024)
        result, _ = runtime.run({"blob": blob}, answer=lambda call: ok("y" * (15 * 1024 * 1024)))
        self.assertEqual(result["output"], {"input": 10 * 1024 * 1024, "reply": 15 * 1024 * 1024})
        self.assert_clean_exit(runtime)

    def test_context_attributes(self):
        runtime = self.start("""
            import asyncio, tempfile
            from magic import Controller, contract, CapabilityNotDeclared

            @contract("./contract.yaml")
            class Ctx(Controller):
                async def execute(self, input):
                    first = self.elapsed_ms
                    await asyncio.sleep(0.05)
                    second = self.elapsed_ms
                    try:
                        self.temp_dir
                        temp = "no error"
                    except CapabilityNotDeclared as exc:
                        temp = exc.code
                    return {"first": first, "second": second, "temp": temp,
                            "timeout_ms": self.timeout_ms, "type": type(first).__name__}
        """)
        result, _ = runtime.run({}, timeout_ms=1234)
        out = result["output"]
        self.assertEqual(out["type"], "float")
        self.assertGreaterEqual(out["second"] - out["first"], 45)
        self.assertLess(out["first"], 1000)
        self.assertEqual(out["temp"], "E2001")
        self.assertEqual(out["timeout_ms"], 1234)
        self.assert_clean_exit(runtime)

    def test_temp_dir_is_exposed_and_used_by_tempfile(self):
        import os, shutil, tempfile
        temp = tempfile.mkdtemp(prefix="magic-sdk-tmp-")
        self.addCleanup(shutil.rmtree, temp, True)
        runtime = self.start("""
            import os, tempfile
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Tmp(Controller):
                async def execute(self, input):
                    path = os.path.join(self.temp_dir, "note.txt")
                    with open(path, "w") as f:
                        f.write("hi")
                    with tempfile.NamedTemporaryFile(delete=False) as f:
                        other = f.name
                    return {"dir": self.temp_dir, "other_dir": os.path.dirname(other),
                            "content": open(path).read()}
        """)
        result, _ = runtime.run({}, temp_dir=temp)
        self.assertEqual(result["output"], {"dir": temp, "other_dir": temp, "content": "hi"})
        self.assert_clean_exit(runtime)

    # ---- calls ----

    def test_concurrent_calls_answered_out_of_order(self):
        runtime = self.start("""
            import asyncio
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Many(Controller):
                async def execute(self, input):
                    a, b, c = await asyncio.gather(
                        self.secrets.get("A"), self.secrets.get("B"), self.cache.get("k:c"))
                    return {"a": a, "b": b, "c": c}
        """)
        runtime.execute({})
        calls = [runtime.recv() for _ in range(3)]
        self.assertTrue(all(c["type"] == "call" for c in calls), calls)
        ids = [c["id"] for c in calls]
        self.assertEqual(len(set(ids)), 3)
        self.assertTrue(all(isinstance(i, int) and i > 0 for i in ids))
        by_target = {c["args"]["key"]: c for c in calls}
        self.assertEqual(by_target["A"]["capability"], "secrets")
        self.assertEqual(by_target["A"]["op"], "get")
        self.assertEqual(by_target["k:c"]["capability"], "cache")
        # Answer in reverse order of sending.
        for call in reversed(calls):
            runtime.send({"type": "reply", "id": call["id"], "ok": True,
                          "value": "value-of-" + call["args"]["key"]})
        result = runtime.recv()
        self.assertEqual(result["output"], {"a": "value-of-A", "b": "value-of-B", "c": "value-of-k:c"})
        self.assert_clean_exit(runtime)

    def test_call_frames_carry_the_documented_args(self):
        runtime = self.start("""
            import datetime
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Args(Controller):
                async def execute(self, input):
                    await self.db.query("t", where={"a": 1}, columns=["a"], order_by="-a", limit=2, offset=1)
                    await self.db.update("t", {"a": 2}, where={"a": 1})
                    await self.db.delete("t", allow_all=True)
                    await self.db.raw("select 1", [])
                    r = await self.http.post("https://api.example.com/x", json={"k": 1},
                                             headers={"X-A": "b"}, timeout=2.5)
                    await self.queue.receive("q", wait=datetime.timedelta(seconds=1), max=5)
                    await self.cache.set("p:k", {"v": 1}, ttl=datetime.timedelta(minutes=2))
                    return {"status": r.status, "id": r["id"], "has": "id" in r,
                            "ct": r.headers["Content-Type"], "json": r.json()}
        """)
        def answer(call):
            if call["capability"] == "http":
                return ok({"status": 201, "headers": {"content-type": "application/json"},
                           "text": '{"id": "in_1"}', "json": {"id": "in_1"}})
            return ok(None)
        result, frames = runtime.run({}, answer=answer)
        args = [(f["capability"], f["op"], f["args"]) for f in frames]
        self.assertEqual(args, [
            ("db", "query", {"table": "t", "where": {"a": 1}, "columns": ["a"], "order_by": "-a",
                             "limit": 2, "offset": 1}),
            ("db", "update", {"table": "t", "values": {"a": 2}, "where": {"a": 1}}),
            ("db", "delete", {"table": "t", "where": {}, "allow_all": True}),
            ("db", "raw", {"sql": "select 1", "params": []}),
            ("http", "request", {"method": "POST", "url": "https://api.example.com/x",
                                 "headers": {"X-A": "b"}, "json": {"k": 1}, "timeout_ms": 2500}),
            ("queue", "receive", {"queue": "q", "wait_ms": 1000, "max": 5}),
            ("cache", "set", {"key": "p:k", "value": {"v": 1}, "ttl_s": 120}),
        ])
        self.assertEqual(result["output"], {"status": 201, "id": "in_1", "has": True,
                                            "ct": "application/json", "json": {"id": "in_1"}})
        self.assert_clean_exit(runtime)

    # ---- without an event loop (the controller does not import asyncio) ----

    def test_a_controller_without_asyncio_runs_without_an_event_loop(self):
        runtime = self.start("""
            import sys
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Plain(Controller):
                async def execute(self, input):
                    a = await self.secrets.get("A")
                    try:
                        await self.cache.get("k")
                    except Exception as exc:
                        b = type(exc).__name__
                    return {"a": a, "b": b, "asyncio": "asyncio" in sys.modules}
        """)
        def answer(call):
            if call["capability"] == "secrets":
                return ok("s3cret")
            return fail("E2006", "denied", {"allow_with": "cache:read"})
        result, frames = runtime.run({}, answer=answer)
        self.assertEqual(result["output"], {"a": "s3cret", "b": "CacheDenied", "asyncio": False})
        self.assertEqual([f["id"] for f in frames], [1, 2])
        self.assert_clean_exit(runtime)

    def test_asyncio_imported_inside_execute_gets_a_running_loop(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Lazy(Controller):
                async def execute(self, input):
                    import asyncio
                    await asyncio.sleep(0.01)
                    a, b = await asyncio.gather(self.secrets.get("A"), self.secrets.get("B"))
                    await asyncio.sleep(0)
                    return {"a": a, "b": b}
        """)
        result, frames = runtime.run({}, answer=lambda call: ok("v-" + call["args"]["key"]))
        self.assertEqual(result["output"], {"a": "v-A", "b": "v-B"})
        self.assertEqual(len(frames), 2)
        self.assert_clean_exit(runtime)

    # ---- capability errors ----

    def test_capability_error_caught_by_the_controller(self):
        runtime = self.start("""
            from magic import Controller, contract, CapabilityDenied, TableDenied

            @contract("./contract.yaml")
            class Catch(Controller):
                async def execute(self, input):
                    try:
                        await self.db.query("orders")
                    except CapabilityDenied as exc:
                        return {"code": exc.code, "details": exc.details, "text": str(exc),
                                "table": isinstance(exc, TableDenied)}
                    return {"code": None}
        """)
        details = {"capability": "db:read", "target": "orders",
                   "allow_with": "db:read: { tables: [orders] }"}
        result, _ = runtime.run({}, answer=lambda c: fail("E2004", "table orders is not allowed", details))
        out = result["output"]
        self.assertTrue(result["ok"])
        self.assertEqual(out["code"], "E2004")
        self.assertEqual(out["details"], details)
        self.assertTrue(out["table"])
        self.assertIn("table orders is not allowed", out["text"])
        self.assertIn("db:read: { tables: [orders] }", out["text"])
        self.assertIn("contract.yaml", out["text"])
        self.assert_clean_exit(runtime)

    def test_capability_error_escaping_keeps_its_code(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Escape(Controller):
                async def execute(self, input):
                    await self.secrets.get("NOPE")
                    return {}
        """)
        details = {"capability": "secrets:read", "target": "NOPE",
                   "allow_with": "secrets:read: { keys: [NOPE] }"}
        result, _ = runtime.run({}, answer=lambda c: fail("E2003", "secret NOPE is not allowed", details))
        self.assertFalse(result["ok"])
        error = result["error"]
        self.assertEqual(error["code"], "E2003")
        self.assertEqual(error["details"], details)
        self.assertEqual(error["exception"], "magic.SecretDenied")
        self.assertIn("secret NOPE is not allowed", error["message"])
        self.assertIn("secrets:read: { keys: [NOPE] }", error["message"])
        self.assertIn("Traceback", error["traceback"])
        self.assert_clean_exit(runtime)

    def test_backend_unavailable_maps_to_its_class(self):
        runtime = self.start("""
            from magic import Controller, contract, BackendUnavailable, CapabilityDenied

            @contract("./contract.yaml")
            class Down(Controller):
                async def execute(self, input):
                    try:
                        await self.cache.get("k")
                    except BackendUnavailable as exc:
                        return {"code": exc.code, "denied": isinstance(exc, CapabilityDenied)}
        """)
        result, _ = runtime.run({}, answer=lambda c: fail("E5003", "redis is down"))
        self.assertEqual(result["output"], {"code": "E5003", "denied": False})
        self.assert_clean_exit(runtime)

    # ---- failures ----

    def test_exception_becomes_e5001_with_traceback(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Boom(Controller):
                async def execute(self, input):
                    raise ValueError("bad customer")
        """)
        result, _ = runtime.run({})
        self.assertFalse(result["ok"])
        error = result["error"]
        self.assertEqual(error["code"], "E5001")
        self.assertEqual(error["message"], "ValueError: bad customer")
        self.assertEqual(error["exception"], "ValueError")
        self.assertIn("Traceback (most recent call last)", error["traceback"])
        self.assertIn("controller.py", error["traceback"])
        self.assertIn('raise ValueError("bad customer")', error["traceback"])
        self.assertNotIn("details", error)
        self.assert_clean_exit(runtime)

    def test_exception_with_an_unencodable_message_still_gets_a_result(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Odd(Controller):
                async def execute(self, input):
                    raise ValueError("bad \\ud800 text " + "x" * 100000)
        """)
        result, _ = runtime.run({})
        self.assertEqual(result["error"]["code"], "E5001")
        self.assertIn("bad ? text", result["error"]["message"])
        self.assertLess(len(result["error"]["message"]), 9 * 1024)
        self.assert_clean_exit(runtime)

    def test_sys_exit_inside_execute_is_a_failed_result(self):
        runtime = self.start("""
            import sys
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Quit(Controller):
                async def execute(self, input):
                    sys.exit(3)
        """)
        result, _ = runtime.run({})
        self.assertEqual(result["error"]["code"], "E5001")
        self.assertEqual(result["error"]["exception"], "SystemExit")
        self.assert_clean_exit(runtime)

    def test_non_serializable_output(self):
        cases = {
            "a set": "{'ids': {1, 2}}",
            "NaN": "{'x': float('nan')}",
            "a lone surrogate": "{'x': '\\ud800'}",
            "an object": "{'x': object()}",
        }
        for what, expr in cases.items():
            with self.subTest(what):
                runtime = self.start("""
                    from magic import Controller, contract

                    @contract("./contract.yaml")
                    class Odd(Controller):
                        async def execute(self, input):
                            return %s
                """ % expr)
                result, _ = runtime.run({})
                self.assertFalse(result["ok"])
                self.assertEqual(result["error"]["code"], "E5001")
                self.assertIn("output of execute() cannot be sent", result["error"]["message"])
                self.assert_clean_exit(runtime)

    def test_oversize_output(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Big(Controller):
                async def execute(self, input):
                    return {"blob": "x" * (17 * 1024 * 1024)}
        """)
        result, _ = runtime.run({})
        self.assertEqual(result["error"]["code"], "E5001")
        self.assertIn("16 MiB", result["error"]["message"])
        self.assert_clean_exit(runtime)

    def test_load_failures_are_e5001_results(self):
        cases = {
            "syntax error": ("def broken(:\n", "SyntaxError"),
            "import error": ("import does_not_exist_anywhere\n", "does_not_exist_anywhere"),
            "no controller": ("x = 1\n", "exactly one class"),
            "two controllers": ("from magic import Controller\nclass A(Controller):\n    async def execute(self, i): pass\n"
                                "class B(Controller):\n    async def execute(self, i): pass\n", "found: A, B"),
            "sync execute": ("from magic import Controller\nclass A(Controller):\n    def execute(self, i): return {}\n",
                             "async def execute"),
        }
        for what, (source, expected) in cases.items():
            with self.subTest(what):
                runtime = self.start(source)
                result, _ = runtime.run({})
                self.assertFalse(result["ok"])
                self.assertEqual(result["error"]["code"], "E5001")
                self.assertIn("controller.py could not be loaded", result["error"]["message"])
                self.assertIn(expected, result["error"]["message"] + result["error"]["traceback"])
                self.assert_clean_exit(runtime)

    # ---- logs and metrics ----

    def test_print_and_stderr_become_log_frames(self):
        runtime = self.start("""
            import sys, threading, logging
            from magic import Controller, contract

            print("imported")

            @contract("./contract.yaml")
            class Talk(Controller):
                async def execute(self, input):
                    print("hello", "world")
                    print("to stderr", file=sys.stderr)
                    t = threading.Thread(target=print, args=("from a thread",))
                    t.start(); t.join()
                    logging.getLogger("mine").error("via logging")
                    sys.stdout.write("no newline")
                    return {}
        """)
        result, frames = runtime.run({})
        self.assertTrue(result["ok"])
        logs = [(f["level"], f["message"]) for f in frames if f["type"] == "log"]
        self.assertIn(("info", "imported"), logs)
        self.assertIn(("info", "hello world"), logs)
        self.assertIn(("warning", "to stderr"), logs)
        self.assertIn(("info", "no newline"), logs)  # flushed before the result
        self.assertIn(("info", "from a thread"), logs)
        self.assertIn(("error", "via logging"), logs)
        self.assertEqual(logs[0], ("info", "imported"))
        self.assert_clean_exit(runtime)

    def test_metric_and_log_frames(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Observe(Controller):
                async def execute(self, input):
                    self.metrics.counter("invoices_synced_total", labels={"plan": "pro"})
                    self.metrics.gauge("queue_depth", 7)
                    self.metrics.histogram("sync_seconds", 0.25)
                    self.log.info("synced", customer_id="c1", when=object)
                    self.log.debug("details")
                    errors = []
                    for bad in (lambda: self.metrics.counter("bad-name"),
                                lambda: self.metrics.gauge("g", float("inf")),
                                lambda: self.metrics.counter("c", -1)):
                        try:
                            bad()
                        except ValueError as exc:
                            errors.append(str(exc))
                    return {"errors": len(errors)}
        """)
        result, frames = runtime.run({})
        self.assertEqual(result["output"], {"errors": 3})
        metrics = [f for f in frames if f["type"] == "metric"]
        self.assertEqual(metrics, [
            {"type": "metric", "kind": "counter", "name": "invoices_synced_total", "value": 1,
             "labels": {"plan": "pro"}},
            {"type": "metric", "kind": "gauge", "name": "queue_depth", "value": 7},
            {"type": "metric", "kind": "histogram", "name": "sync_seconds", "value": 0.25},
        ])
        logs = [f for f in frames if f["type"] == "log"]
        self.assertEqual(logs[0]["level"], "info")
        self.assertEqual(logs[0]["message"], "synced")
        self.assertEqual(logs[0]["fields"]["customer_id"], "c1")
        self.assertEqual(logs[0]["fields"]["when"], "<class 'object'>")
        self.assertEqual(logs[1], {"type": "log", "level": "debug", "message": "details"})
        self.assert_clean_exit(runtime)

    def test_log_lines_are_capped_and_nothing_follows_the_result(self):
        runtime = self.start("""
            import asyncio
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Chatty(Controller):
                async def execute(self, input):
                    for i in range(1500):
                        self.log.info("line %d" % i)
                    self.log.info("y" * 20000)
                    asyncio.get_running_loop().call_later(0.01, lambda: self.log.info("after"))
                    return {}
        """)
        result, frames = runtime.run({})
        self.assertTrue(result["ok"])
        self.assertEqual(len(frames), 1000)
        self.assertIsNone(runtime.recv(), "nothing may follow the result frame")
        self.assert_clean_exit(runtime)

    # ---- the runtime goes away or misbehaves ----

    def test_socket_closed_mid_call_ends_the_worker(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Wait(Controller):
                async def execute(self, input):
                    try:
                        await self.db.query("t")
                    except Exception:
                        pass
                    import asyncio
                    await asyncio.sleep(3600)  # must be cancelled, not waited for
                    return {}
        """)
        runtime.execute({})
        self.assertEqual(runtime.recv()["type"], "call")
        runtime.sock.close()
        # finish() fails the test if the worker is still alive after TIMEOUT seconds; the
        # controller's hour-long sleep would need far longer.
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 3, stderr)
        self.assertIn("closed", stderr)

    def test_socket_closed_while_the_controller_blocks_the_loop(self):
        runtime = self.start("""
            import time
            from magic import Controller, contract

            @contract("./contract.yaml")
            class Stuck(Controller):
                async def execute(self, input):
                    print("blocking")
                    time.sleep(3600)  # never yields to the event loop
                    return {}
        """)
        runtime.execute({})
        self.assertEqual(runtime.recv()["type"], "log")
        runtime.sock.close()
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 3, stderr)
        self.assertIn("does not return", stderr)

    def test_socket_closed_before_execute(self):
        runtime = self.start(HELLO)
        runtime.sock.close()
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 3)
        self.assertIn("before sending an execute frame", stderr)

    def test_runtime_protocol_violations_end_the_worker(self):
        def body(data):
            return struct.pack(">I", len(data)) + data
        cases = {
            "oversize length": (struct.pack(">I", 16 * 1024 * 1024 + 1), "16 MiB"),
            "not json": (body(b"\xff\xfenot json"), "not valid UTF-8 JSON"),
            "json array": (body(b"[1, 2]"), "not a JSON object"),
            "no type": (body(b'{"id": 1}'), "type"),
            "unknown type": (body(b'{"type": "bogus"}'), "unknown frame type"),
            "reply first": (body(b'{"type": "reply", "id": 1, "ok": true}'), "expected an execute frame"),
            "execute without request_id": (body(b'{"type": "execute", "input": {}}'), "request_id"),
        }
        for what, (data, expected) in cases.items():
            with self.subTest(what):
                runtime = self.start(HELLO)
                runtime.send_raw(data)
                self.assertIsNone(runtime.recv(), "no result after a protocol violation")
                code, _, stderr = runtime.finish()
                self.assertEqual(code, 2, stderr)
                self.assertIn("protocol violation", stderr)
                self.assertIn(expected, stderr)

    def test_violations_during_an_execution(self):
        source = """
            from magic import Controller, contract

            @contract("./contract.yaml")
            class One(Controller):
                async def execute(self, input):
                    await self.secrets.get("A")
                    return {}
        """
        cases = {
            "reply for an unknown id": ({"type": "reply", "id": 999, "ok": True, "value": 1}, "not a call in flight"),
            "second execute": ({"type": "execute", "request_id": "x", "input": {}}, "unexpected 'execute'"),
            "reply without ok": ({"type": "reply", "id": 1}, "no boolean ok"),
            "failed reply without code": ({"type": "reply", "id": 1, "ok": False, "error": {}}, "code"),
        }
        for what, (frame, expected) in cases.items():
            with self.subTest(what):
                runtime = self.start(source)
                runtime.execute({})
                self.assertEqual(runtime.recv()["type"], "call")
                runtime.send(frame)
                self.assertIsNone(runtime.recv())
                code, _, stderr = runtime.finish()
                self.assertEqual(code, 2, stderr)
                self.assertIn(expected, stderr)

    def test_oversize_frame_during_an_execution(self):
        runtime = self.start("""
            from magic import Controller, contract

            @contract("./contract.yaml")
            class One(Controller):
                async def execute(self, input):
                    await self.secrets.get("A")
                    return {}
        """)
        runtime.execute({})
        self.assertEqual(runtime.recv()["type"], "call")
        runtime.send_raw(struct.pack(">I", 0xFFFFFFFF))
        self.assertIsNone(runtime.recv())
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 2)
        self.assertIn("exceeds the 16 MiB limit", stderr)

    def test_bad_socket_fd(self):
        runtime = FakeRuntime(make_package(self, HELLO), env={"MAGIC_SOCKET_FD": "nope"})
        self.addCleanup(runtime.close)
        code, _, stderr = runtime.finish()
        self.assertEqual(code, 4)
        self.assertIn("MAGIC_SOCKET_FD", stderr)


if __name__ == "__main__":
    unittest.main()
