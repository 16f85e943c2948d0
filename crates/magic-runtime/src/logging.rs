//! JSON-lines logs with the guide's fields.
//!
//! Owns: the log line format — one JSON object per line with `timestamp` (RFC 3339, UTC,
//! microseconds), `level` (lower case), `message`, and the event's fields flattened
//! (`controller`, `version`, `request_id`, `event`, `duration_ms`, `capabilities_used`, …).
//! Fields named in [`JSON_FIELDS`] carry JSON text and are embedded as JSON; a controller's
//! own `fields` are flattened without overriding the runtime's keys. Must never: log a
//! secret value or an API key.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields whose value is JSON text, embedded as JSON.
pub const JSON_FIELDS: &[&str] = &["capabilities_used", "details"];

/// The JSON-lines event formatter.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

struct Collect<'a> {
    map: &'a mut serde_json::Map<String, serde_json::Value>,
    controller_fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        self.map.insert(field.name().to_string(), value);
    }
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "fields" {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(value) {
                self.controller_fields = Some(m);
                return;
            }
        }
        if JSON_FIELDS.contains(&field.name()) {
            if let Ok(v) = serde_json::from_str(value) {
                self.put(field, v);
                return;
            }
        }
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%display` values arrive here too; render and re-route through record_str.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.put(field, text.into());
        } else {
            self.record_str(field, &text);
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", render(event))
    }
}

/// Render one event as a JSON line (without the newline).
pub fn render(event: &Event<'_>) -> String {
    let mut map = serde_json::Map::new();
    map.insert(
        "timestamp".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    map.insert(
        "level".into(),
        event
            .metadata()
            .level()
            .as_str()
            .to_ascii_lowercase()
            .into(),
    );
    let mut collect = Collect {
        map: &mut map,
        controller_fields: None,
    };
    event.record(&mut collect);
    if let Some(extra) = collect.controller_fields.take() {
        for (k, v) in extra {
            map.entry(k).or_insert(v);
        }
    }
    if !map.contains_key("event") {
        map.insert("target".into(), event.metadata().target().into());
    }
    serde_json::Value::Object(map).to_string()
}

/// Install the JSON-lines subscriber on stdout (filter from `RUST_LOG`, default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(JsonLines)
        .with_writer(std::io::stdout)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_guides_fields() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                controller = "InvoiceSync", version = "1.2.0", request_id = "req_1",
                event = "execution_completed", duration_ms = 142u64,
                capabilities_used = %r#"["db:read","http:egress"]"#,
                fields = %r#"{"customer_id":"cust_789","level":"spoofed"}"#,
                "done"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "info");
        assert_eq!(line["controller"], "InvoiceSync");
        assert_eq!(line["version"], "1.2.0");
        assert_eq!(line["request_id"], "req_1");
        assert_eq!(line["event"], "execution_completed");
        assert_eq!(line["duration_ms"], 142);
        assert_eq!(
            line["capabilities_used"],
            serde_json::json!(["db:read", "http:egress"])
        );
        assert_eq!(line["customer_id"], "cust_789");
        assert_eq!(line["message"], "done");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
