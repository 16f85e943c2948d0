//! Chained audit records and their canonical hash.
//!
//! Owns: the record layout, the canonical byte serialization that is hashed, the timestamp
//! format, and the JSON-line form records take in exports and sinks.
//!
//! Must never: depend on anything but the record's own bytes. The hash of a record is a pure
//! function of it, so an external tool can recompute every hash from an export.
//!
//! # Canonical form (version 1)
//!
//! `hash = SHA-256(C)` where `C` is the concatenation of:
//!
//! 1. the 15 ASCII bytes `magic-audit/v1\n`;
//! 2. `seq` as an unsigned 64-bit big-endian integer (8 bytes);
//! 3. `timestamp` as a *string* (below);
//! 4. `event` as a string;
//! 5. `request_id`, `controller`, `version`, `actor`, `capability`, `target`, `outcome`, in
//!    this order, each as an *optional string*;
//! 6. `details` as a string: the exact stored JSON text (see below);
//! 7. `prev_hash` as its 32 raw bytes (not hex).
//!
//! A *string* is its UTF-8 byte length as an unsigned 32-bit big-endian integer followed by
//! the bytes. An *optional string* is the byte `0x00` when absent, or the byte `0x01`
//! followed by the string when present (so absent and empty differ).
//!
//! `timestamp` is UTC, RFC 3339 with exactly six fractional digits and a `Z`:
//! `2026-11-21T23:40:34.123456Z`. `details` is the compact JSON text written at append time
//! (`serde_json` output: object keys sorted, no whitespace); the hash covers the text exactly
//! as stored, which is what the `details` column of the store holds and what the JSON-lines
//! form embeds verbatim. Hashes are written as 64 lowercase hex digits. The first record has
//! `seq` 1 and `prev_hash` = 64 zeros ([`GENESIS_HASH`]).
//!
//! In Python: `h = sha256(b"magic-audit/v1\n" + struct.pack(">Q", seq) + s(ts) + s(event)
//! + o(request_id) + … + o(outcome) + s(details) + bytes.fromhex(prev_hash))` with
//! `s(x) = struct.pack(">I", len(x.encode())) + x.encode()` and
//! `o(x) = b"\0" if x is None else b"\1" + s(x)`.

use sha2::{Digest, Sha256};

use crate::AuditEvent;

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation prefix of the canonical form.
const DOMAIN: &[u8] = b"magic-audit/v1\n";

/// One record of the chain, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, 1-based, gap-free.
    pub seq: u64,
    /// When the record was chained: UTC, RFC 3339, microseconds, `Z`.
    pub timestamp: String,
    /// Event type (see [`AuditEvent::event`]).
    pub event: String,
    /// Request ID.
    pub request_id: Option<String>,
    /// Controller name.
    pub controller: Option<String>,
    /// Controller version.
    pub version: Option<String>,
    /// Authenticated identity.
    pub actor: Option<String>,
    /// Capability.
    pub capability: Option<String>,
    /// Target.
    pub target: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// The event's details as compact JSON text, exactly as hashed.
    pub details: String,
    /// Hash of the previous record (hex), [`GENESIS_HASH`] for seq 1.
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form (hex).
    pub hash: String,
}

impl AuditRecord {
    /// Chain `event` at `seq` after `prev_hash`, computing the hash.
    pub fn new(seq: u64, timestamp: String, event: &AuditEvent, prev_hash: String) -> AuditRecord {
        AuditRecord::from_event(seq, timestamp, event.clone(), prev_hash)
    }

    /// Like [`Self::new`], taking the event by value (no copies: the writer's hot path).
    pub fn from_event(
        seq: u64,
        timestamp: String,
        event: AuditEvent,
        prev_hash: String,
    ) -> AuditRecord {
        let details = details_text(&event.details);
        let mut record = AuditRecord {
            seq,
            timestamp,
            event: event.event,
            request_id: event.request_id,
            controller: event.controller,
            version: event.version,
            actor: event.actor,
            capability: event.capability,
            target: event.target,
            outcome: event.outcome,
            details,
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }

    /// The canonical bytes that are hashed (see the module doc).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.details.len());
        self.write_canonical(&mut out);
        out
    }

    /// Feed the canonical form to `out` piece by piece.
    fn write_canonical(&self, out: &mut impl Canonical) {
        out.put(DOMAIN);
        out.put(&self.seq.to_be_bytes());
        put_str(out, &self.timestamp);
        put_str(out, &self.event);
        for field in [
            &self.request_id,
            &self.controller,
            &self.version,
            &self.actor,
            &self.capability,
            &self.target,
            &self.outcome,
        ] {
            match field {
                None => out.put(&[0]),
                Some(s) => {
                    out.put(&[1]);
                    put_str(out, s);
                }
            }
        }
        put_str(out, &self.details);
        match decode_hash(&self.prev_hash) {
            Some(raw) => out.put(&raw),
            // A malformed prev_hash cannot be a link: hash its text instead so the record
            // still gets a (never matching) hash rather than a panic.
            None => put_str(out, &self.prev_hash),
        }
    }

    /// SHA-256 of [`Self::canonical_bytes`], lowercase hex.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        self.write_canonical(&mut h);
        hex::encode(h.finalize())
    }

    /// The event this record holds (details parsed; `null` if the stored text is not JSON).
    pub fn to_event(&self) -> AuditEvent {
        AuditEvent {
            event: self.event.clone(),
            request_id: self.request_id.clone(),
            controller: self.controller.clone(),
            version: self.version.clone(),
            actor: self.actor.clone(),
            capability: self.capability.clone(),
            target: self.target.clone(),
            outcome: self.outcome.clone(),
            details: self.details_value(),
        }
    }

    /// The details as a JSON value (`null` if the stored text is not JSON).
    pub fn details_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.details).unwrap_or(serde_json::Value::Null)
    }

    /// One JSON object on one line (no trailing newline) with every field; `details` is the
    /// stored JSON text embedded verbatim, so the line carries the exact hashed bytes.
    pub fn to_json_line(&self) -> String {
        #[derive(serde::Serialize)]
        struct Head<'a> {
            seq: u64,
            timestamp: &'a str,
            event: &'a str,
            request_id: &'a Option<String>,
            controller: &'a Option<String>,
            version: &'a Option<String>,
            actor: &'a Option<String>,
            capability: &'a Option<String>,
            target: &'a Option<String>,
            outcome: &'a Option<String>,
            prev_hash: &'a str,
            hash: &'a str,
        }
        let head = Head {
            seq: self.seq,
            timestamp: &self.timestamp,
            event: &self.event,
            request_id: &self.request_id,
            controller: &self.controller,
            version: &self.version,
            actor: &self.actor,
            capability: &self.capability,
            target: &self.target,
            outcome: &self.outcome,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        };
        let mut line = serde_json::to_string(&head).unwrap_or_else(|_| "{}".to_string());
        // Splice `"details":<text>` before the closing brace. Text that is not one JSON
        // value (only possible after tampering) is embedded as a JSON string instead.
        let details = if is_single_json_value(&self.details) {
            self.details.clone()
        } else {
            serde_json::Value::String(self.details.clone()).to_string()
        };
        line.pop();
        line.push_str(",\"details\":");
        line.push_str(&details);
        line.push('}');
        line
    }

    /// Parse a line written by [`Self::to_json_line`], keeping `details` as its exact text.
    pub fn from_json_line(line: &str) -> Option<AuditRecord> {
        #[derive(serde::Deserialize)]
        struct Line {
            seq: u64,
            timestamp: String,
            event: String,
            request_id: Option<String>,
            controller: Option<String>,
            version: Option<String>,
            actor: Option<String>,
            capability: Option<String>,
            target: Option<String>,
            outcome: Option<String>,
            prev_hash: String,
            hash: String,
        }
        let l: Line = serde_json::from_str(line).ok()?;
        let details = details_slice(line)?;
        Some(AuditRecord {
            seq: l.seq,
            timestamp: l.timestamp,
            event: l.event,
            request_id: l.request_id,
            controller: l.controller,
            version: l.version,
            actor: l.actor,
            capability: l.capability,
            target: l.target,
            outcome: l.outcome,
            details: details.to_string(),
            prev_hash: l.prev_hash,
            hash: l.hash,
        })
    }
}

/// The compact JSON text of a details value (what is stored and hashed).
pub fn details_text(details: &serde_json::Value) -> String {
    serde_json::to_string(details).unwrap_or_else(|_| "null".to_string())
}

/// The current time in the record timestamp format.
pub fn now_timestamp() -> String {
    format_timestamp(chrono::Utc::now())
}

/// Format a time in the record timestamp format (UTC, microseconds, `Z`).
pub fn format_timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Decode a 64-hex-digit hash; `None` unless it is exactly that.
pub fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    if hex_hash.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// Where canonical bytes go: a buffer, or straight into the hash.
trait Canonical {
    fn put(&mut self, bytes: &[u8]);
}

impl Canonical for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Canonical for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

fn put_str(out: &mut impl Canonical, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.put(&len.to_be_bytes());
    out.put(s.as_bytes());
}

fn is_single_json_value(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// The raw text of the `details` value of a line written by [`AuditRecord::to_json_line`]
/// (always the last member). The first `,"details":` is the right one: before it only the
/// other members stand, whose strings are escaped, so the pattern cannot occur inside them.
fn details_slice(line: &str) -> Option<&str> {
    let line = line.trim_end();
    let start = line.find(",\"details\":")? + ",\"details\":".len();
    let inner = line.get(start..line.len().checked_sub(1)?)?;
    if !line.ends_with('}') || !is_single_json_value(inner) {
        return None;
    }
    // A JSON string here means the stored text was not JSON; give back that text.
    if inner.starts_with('"') {
        return None;
    }
    Some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            event: "capability_use".into(),
            request_id: Some("req-1".into()),
            controller: Some("InvoiceSync".into()),
            version: Some("1.0.0".into()),
            actor: None,
            capability: Some("db:read".into()),
            target: Some("invoices".into()),
            outcome: Some("allowed".into()),
            details: serde_json::json!({"z": 1, "a": [true, null, "é"]}),
        }
    }

    /// A fixed vector: recomputed independently from the module doc's definition (Python
    /// `hashlib`), so a change of the canonical form fails here.
    #[test]
    fn canonical_hash_matches_the_documented_vector() {
        let r = AuditRecord::new(
            1,
            "2026-01-02T03:04:05.000006Z".into(),
            &event(),
            GENESIS_HASH.into(),
        );
        assert_eq!(r.details, r#"{"a":[true,null,"é"],"z":1}"#);
        assert_eq!(r.hash, r.compute_hash());
        assert_eq!(r.hash, KNOWN_VECTOR_HASH);
        assert_eq!(r.hash, hex::encode(Sha256::digest(r.canonical_bytes())));
    }

    const KNOWN_VECTOR_HASH: &str =
        "c380e1e5f65ba8a08fbbe1910a77a60a8afe9a50ea75a427e3cd2929eaa8ef42";

    #[test]
    fn every_field_changes_the_hash() {
        let base = AuditRecord::new(7, now_timestamp(), &event(), GENESIS_HASH.into());
        let mut variants: Vec<AuditRecord> = Vec::new();
        let mut v = base.clone();
        v.seq = 8;
        variants.push(v);
        let mut v = base.clone();
        v.timestamp.push('x');
        variants.push(v);
        let mut v = base.clone();
        v.event = "capability_violation".into();
        variants.push(v);
        for i in 0..7 {
            let mut v = base.clone();
            let f = match i {
                0 => &mut v.request_id,
                1 => &mut v.controller,
                2 => &mut v.version,
                3 => &mut v.actor,
                4 => &mut v.capability,
                5 => &mut v.target,
                _ => &mut v.outcome,
            };
            *f = match f {
                Some(_) => None,
                None => Some(String::new()),
            };
            variants.push(v);
        }
        let mut v = base.clone();
        v.details = r#"{"a":[true,null,"é"],"z":2}"#.into();
        variants.push(v);
        let mut v = base.clone();
        v.prev_hash = "11".repeat(32);
        variants.push(v);
        for v in variants {
            assert_ne!(v.compute_hash(), base.hash, "{v:?}");
        }
    }

    #[test]
    fn absent_and_empty_and_shifted_fields_differ() {
        let mut a = AuditRecord::new(1, now_timestamp(), &event(), GENESIS_HASH.into());
        a.request_id = Some(String::new());
        a.controller = None;
        let mut b = a.clone();
        b.request_id = None;
        b.controller = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
        // Moving bytes between adjacent strings changes the hash (length prefixes).
        let mut c = a.clone();
        c.event = "ab".into();
        c.timestamp = "x".into();
        let mut d = c.clone();
        d.event = "b".into();
        d.timestamp = "xa".into();
        assert_ne!(c.compute_hash(), d.compute_hash());
    }

    #[test]
    fn json_line_round_trips_with_exact_details() {
        let r = AuditRecord::new(3, now_timestamp(), &event(), "ab".repeat(32));
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["details"]["z"], 1);
        assert_eq!(v["seq"], 3);
        let back = AuditRecord::from_json_line(&line).expect("parses");
        assert_eq!(back, r);
        assert_eq!(back.compute_hash(), r.hash);
        // Details that themselves hold a `details` member and a quote in a head field.
        let mut e = event();
        e.details = serde_json::json!({"a": {"x": 1}, "details": {"y": ",\"details\":"}});
        e.target = Some(",\"details\":{}".into());
        let r = AuditRecord::new(4, now_timestamp(), &e, GENESIS_HASH.into());
        let back = AuditRecord::from_json_line(&r.to_json_line()).expect("parses");
        assert_eq!(back, r);
    }

    #[test]
    fn json_line_of_non_json_details_stays_valid() {
        let mut r = AuditRecord::new(3, now_timestamp(), &event(), GENESIS_HASH.into());
        r.details = "{not json".into();
        let line = r.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["details"], "{not json");
        assert_eq!(r.details_value(), serde_json::Value::Null);
    }

    #[test]
    fn timestamps_have_microseconds_and_z() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-04T05:06:07.5+00:00")
            .expect("valid")
            .with_timezone(&chrono::Utc);
        assert_eq!(format_timestamp(t), "2026-03-04T05:06:07.500000Z");
        assert_eq!(now_timestamp().len(), 27);
    }

    #[test]
    fn decode_hash_rejects_malformed() {
        assert!(decode_hash(GENESIS_HASH).is_some());
        assert!(decode_hash(&"g".repeat(64)).is_none());
        assert!(decode_hash(&"0".repeat(63)).is_none());
        assert!(decode_hash(&"0".repeat(66)).is_none());
    }
}
