"""In-process unit tests of the SDK pieces: errors, argument checks, Response, framing."""

import asyncio
import datetime
import struct
import unittest

import magic
from magic import _protocol, errors
from magic.capabilities import Cache, Db, Http, Log, Metrics, Queue, Response
from magic.controller import ExecutionContext, controller_classes


class RecordingChannel:
    """Stands in for the worker's channel: records frames, answers calls with ``answer``."""

    def __init__(self, answer=None):
        self.calls = []
        self.frames = []
        self.answer = answer

    async def call(self, capability, op, args):
        self.calls.append((capability, op, args))
        return self.answer(capability, op, args) if self.answer else None

    def emit(self, frame):
        self.frames.append(frame)

    def log(self, level, message, fields=None):
        self.frames.append(("log", level, message, fields))


def run(coro):
    return asyncio.run(coro)


class ErrorTest(unittest.TestCase):
    def test_codes_map_to_classes(self):
        table = {
            "E2001": magic.CapabilityNotDeclared,
            "E2002": magic.EgressDenied,
            "E2003": magic.SecretDenied,
            "E2004": magic.TableDenied,
            "E2005": magic.QueueDenied,
            "E2006": magic.CacheDenied,
            "E2007": magic.RawSqlDenied,
            "E2008": magic.EgressAddressDenied,
            "E2099": magic.CapabilityDenied,
            "E5003": magic.BackendUnavailable,
            "E5001": magic.CapabilityError,
        }
        for code, cls in table.items():
            with self.subTest(code):
                exc = errors.error_from_wire(code, "m", {"k": 1})
                self.assertIs(type(exc), cls)
                self.assertEqual(exc.code, code)
                self.assertEqual(exc.details, {"k": 1})
                self.assertIsInstance(exc, magic.CapabilityError)
        self.assertNotIsInstance(errors.error_from_wire("E5003", "m"), magic.CapabilityDenied)

    def test_message_says_what_to_add_to_the_contract(self):
        exc = errors.error_from_wire("E2002", "host evil.com is not allowed",
                                     {"allow_with": "http:egress: { allow: [evil.com] }"})
        self.assertEqual(
            str(exc),
            "[E2002] host evil.com is not allowed; to allow it, declare "
            "`- http:egress: { allow: [evil.com] }` under `capabilities:` in contract.yaml "
            "(merge it into an existing entry for the same capability) and redeploy",
        )
        plain = errors.error_from_wire("E5003", "down")
        self.assertEqual(str(plain), "[E5003] down")
        self.assertIsNone(plain.hint)

    def test_errors_survive_pickling(self):
        import pickle
        exc = errors.error_from_wire("E2004", "no", {"target": "t"})
        copy = pickle.loads(pickle.dumps(exc))
        self.assertIs(type(copy), magic.TableDenied)
        self.assertEqual((copy.code, copy.message, copy.details), ("E2004", "no", {"target": "t"}))


class DbTest(unittest.TestCase):
    def test_query_sends_only_given_args(self):
        channel = RecordingChannel(lambda *a: [])
        run(Db(channel).query("customers"))
        run(Db(channel).query_one("customers", where={"id": "c1"}, columns="name"))
        self.assertEqual(channel.calls, [
            ("db", "query", {"table": "customers"}),
            ("db", "query_one", {"table": "customers", "where": {"id": "c1"}, "columns": ["name"]}),
        ])

    def test_bad_arguments_fail_before_sending(self):
        channel = RecordingChannel()
        db = Db(channel)
        bad = [
            (lambda: db.query(""), TypeError),
            (lambda: db.query("t", where=[("a", 1)]), TypeError),
            (lambda: db.query("t", limit=-1), ValueError),
            (lambda: db.query("t", offset=True), ValueError),
            (lambda: db.insert("t", "values"), TypeError),
            (lambda: db.update("t", {"a": 1}), ValueError),  # no where, no allow_all
            (lambda: db.update("t", {}, where={"a": 1}), TypeError),
            (lambda: db.delete("t", where={}), ValueError),
            (lambda: db.raw("", []), TypeError),
            (lambda: db.raw("select ?", "abc"), TypeError),
        ]
        for make, error in bad:
            with self.assertRaises(error):
                run(make())
        self.assertEqual(channel.calls, [])

    def test_update_and_delete_everything_need_allow_all(self):
        channel = RecordingChannel()
        run(Db(channel).update("t", {"a": 1}, allow_all=True))
        run(Db(channel).delete("t", allow_all=True))
        self.assertEqual(channel.calls, [
            ("db", "update", {"table": "t", "values": {"a": 1}, "where": {}, "allow_all": True}),
            ("db", "delete", {"table": "t", "where": {}, "allow_all": True}),
        ])

    def test_insert_many(self):
        channel = RecordingChannel()
        run(Db(channel).insert("t", [{"a": 1}, {"a": 2}]))
        self.assertEqual(channel.calls, [("db", "insert", {"table": "t", "values": [{"a": 1}, {"a": 2}]})])


class HttpTest(unittest.TestCase):
    def reply(self, *_):
        return {"status": 200, "headers": {"Content-Type": "application/json"},
                "text": '{"id": "x", "n": [1]}', "json": {"id": "x", "n": [1]}}

    def test_response_reads_like_its_json_body(self):
        channel = RecordingChannel(self.reply)
        response = run(Http(channel).get("https://api.example.com/a"))
        self.assertEqual(response.status, 200)
        self.assertTrue(response.ok)
        self.assertEqual(response["id"], "x")
        self.assertIn("id", response)
        self.assertNotIn("nope", response)
        self.assertEqual(response.get("nope", 5), 5)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["CONTENT-TYPE"], "application/json")
        self.assertEqual(response.json(), {"id": "x", "n": [1]})
        self.assertEqual(channel.calls, [("http", "request", {"method": "GET", "url": "https://api.example.com/a"})])

    def test_non_json_body(self):
        response = Response(502, {}, "<html>bad gateway</html>", None, "https://x")
        self.assertFalse(response.ok)
        with self.assertRaises(ValueError):
            response.json()
        with self.assertRaises(TypeError):
            response["id"]
        self.assertEqual(response.get("id"), None)
        with self.assertRaises(magic.HttpStatusError):
            response.raise_for_status()

    def test_json_null_body_is_null_not_an_error(self):
        self.assertIsNone(Response(200, {}, "null", None).json())

    def test_request_checks(self):
        channel = RecordingChannel(self.reply)
        http = Http(channel)
        for make, error in [
            (lambda: http.get("ftp://x"), ValueError),
            (lambda: http.get("/relative"), ValueError),
            (lambda: http.request("GE T", "https://x"), ValueError),
            (lambda: http.post("https://x", json={}, body="a"), ValueError),
            (lambda: http.post("https://x", body=12), TypeError),
            (lambda: http.get("https://x", headers={"a": 1}), TypeError),
            (lambda: http.get("https://x", timeout=0), ValueError),
            (lambda: http.get("https://x", timeout="5"), TypeError),
        ]:
            with self.assertRaises(error):
                run(make())
        self.assertEqual(channel.calls, [])

    def test_json_none_is_sent_as_null_body(self):
        channel = RecordingChannel(self.reply)
        run(Http(channel).put("https://x", json=None, timeout=datetime.timedelta(milliseconds=1500)))
        run(Http(channel).post("https://x", body=b"raw"))
        self.assertEqual(channel.calls[0][2], {"method": "PUT", "url": "https://x", "json": None, "timeout_ms": 1500})
        self.assertEqual(channel.calls[1][2], {"method": "POST", "url": "https://x", "body": "raw"})


class QueueCacheTest(unittest.TestCase):
    def test_publish_returns_the_id(self):
        channel = RecordingChannel(lambda *a: {"id": "m-1"})
        self.assertEqual(run(Queue(channel).publish("q", {"a": 1})), "m-1")

    def test_ack_accepts_a_received_message(self):
        channel = RecordingChannel()
        run(Queue(channel).ack("q", {"id": "m-1", "message": {}, "attempt": 1}))
        self.assertEqual(channel.calls, [("queue", "ack", {"queue": "q", "id": "m-1"})])
        with self.assertRaises(TypeError):
            run(Queue(channel).ack("q", 5))
        with self.assertRaises(ValueError):
            run(Queue(channel).receive("q", max=0))

    def test_ttl_rounds_up_to_whole_seconds(self):
        channel = RecordingChannel()
        cache = Cache(channel)
        run(cache.set("k", 1, ttl=0.2))
        run(cache.set("k", 1, ttl=datetime.timedelta(hours=1)))
        run(cache.set("k", 1))
        self.assertEqual([c[2].get("ttl_s") for c in channel.calls], [1, 3600, None])
        for ttl in (0, -5, float("nan"), datetime.timedelta(0), True):
            with self.assertRaises((ValueError, TypeError)):
                run(cache.set("k", 1, ttl=ttl))


class MetricsLogTest(unittest.TestCase):
    def test_metric_validation(self):
        channel = RecordingChannel()
        metrics = Metrics(channel)
        metrics.counter("ok_name", labels={"plan": 3})
        self.assertEqual(channel.frames, [{"type": "metric", "kind": "counter", "name": "ok_name",
                                           "value": 1, "labels": {"plan": "3"}}])
        for bad in (lambda: metrics.counter("1abc"), lambda: metrics.counter("a-b"),
                    lambda: metrics.gauge("g", "7"), lambda: metrics.gauge("g", True),
                    lambda: metrics.histogram("h", float("nan")), lambda: metrics.counter("c", -0.5),
                    lambda: metrics.gauge("g", 1, labels={"bad-label": "x"})):
            with self.assertRaises(ValueError):
                bad()
        self.assertEqual(len(channel.frames), 1)

    def test_log_levels(self):
        channel = RecordingChannel()
        log = Log(channel)
        log.info("a", k=1)
        log.warn("b")
        with self.assertRaises(ValueError):
            log.log("fatal", "c")
        self.assertEqual(channel.frames, [("log", "info", "a", {"k": 1}), ("log", "warning", "b", {})])


class ControllerTest(unittest.TestCase):
    def test_contract_records_the_path(self):
        @magic.contract("./contract.yaml")
        class C(magic.Controller):
            async def execute(self, input):
                return {}
        self.assertEqual(C.__magic_contract__, "./contract.yaml")
        self.assertTrue(C.__magic_contract_file__.endswith("contract.yaml"))
        with self.assertRaises(TypeError):
            magic.contract("")
        with self.assertRaises(TypeError):
            magic.contract("./c.yaml")(lambda: None)

    def test_capabilities_outside_execute_raise(self):
        class C(magic.Controller):
            async def execute(self, input):
                return {}
        with self.assertRaises(RuntimeError):
            C().db
        with self.assertRaises(RuntimeError):
            C().elapsed_ms

    def test_bound_controller(self):
        class C(magic.Controller):
            async def execute(self, input):
                return {}
        instance = C()
        instance._magic_bind(ExecutionContext(RecordingChannel(), "req_1", temp_dir="/tmp/x"))
        self.assertEqual(instance.request_id, "req_1")
        self.assertEqual(instance.temp_dir, "/tmp/x")
        self.assertIsInstance(instance.db, Db)
        self.assertGreaterEqual(instance.elapsed_ms, 0.0)

    def test_controller_classes_ignores_imported_ones(self):
        class Local(magic.Controller):
            pass
        Local.__module__ = "controller"
        namespace = {"Controller": magic.Controller, "Local": Local, "Imported": ControllerTest}
        self.assertEqual(controller_classes(namespace, "controller"), [Local])


class ProtocolTest(unittest.TestCase):
    def test_frame_round_trip(self):
        data = _protocol.encode_frame({"type": "reply", "id": 1, "ok": True, "value": "é"})
        (length,) = struct.unpack(">I", data[:4])
        self.assertEqual(length, len(data) - 4)
        self.assertEqual(_protocol.decode_length(data[:4]), length)
        self.assertEqual(_protocol.decode_body(data[4:])["value"], "é")

    def test_limits(self):
        self.assertEqual(_protocol.decode_length(struct.pack(">I", 16 * 1024 * 1024)), 16 * 1024 * 1024)
        with self.assertRaises(_protocol.ProtocolViolation):
            _protocol.decode_length(struct.pack(">I", 16 * 1024 * 1024 + 1))
        with self.assertRaises(_protocol.EncodeError):
            _protocol.encode_frame({"type": "log", "message": "x" * (16 * 1024 * 1024)})

    def test_strict_json(self):
        for bad in (float("nan"), float("inf"), {1, 2}, "\ud800", b"bytes"):
            with self.assertRaises(_protocol.EncodeError):
                _protocol.dumps({"v": bad})
        cycle = []
        cycle.append(cycle)
        with self.assertRaises(_protocol.EncodeError):
            _protocol.dumps(cycle)

    def test_runtime_frames_are_checked(self):
        for body in (b"NaN", b'{"type": "reply", "value": NaN}', b"[]", b"{}", b'{"type": 1}',
                     b'{"type": "call"}', b"\xff", b"[" * 100000):
            with self.assertRaises(_protocol.ProtocolViolation, msg=body[:30]):
                _protocol.decode_body(body)


if __name__ == "__main__":
    unittest.main()
