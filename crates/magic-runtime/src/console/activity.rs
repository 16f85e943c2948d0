//! What this node has run lately, for the operator console: a per-controller time series
//! (10-second buckets, last hour), the most recent executions, and their controller log lines.
//!
//! Owns: the bounded in-memory [`Activity`] record, fed where executions complete
//! (`Runtime::execute`) and where controller log lines arrive (the executor). Everything here
//! is per node and lost on restart; the audit chain stays the durable record. Must never: grow
//! without bound (every collection has a fixed cap), or block an execution (one short
//! uncontended mutex section per event; a poisoned lock drops the event).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Width of one time-series bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept per controller (one hour).
pub const BUCKETS: usize = 360;
/// Executions kept in the recent list.
pub const MAX_RECENT: usize = 500;
/// Controller log lines kept per execution.
pub const MAX_LINES_PER_EXECUTION: usize = 50;
/// Executions whose log lines are kept.
pub const MAX_LOGGED_EXECUTIONS: usize = 500;
/// Bytes of one kept log message.
pub const MAX_LINE_BYTES: usize = 1024;
/// Controllers with a time series (others are folded into none: the oldest-updated is evicted).
pub const MAX_SERIES: usize = 1000;

/// Upper bounds (ms) of the latency histogram bins of one bucket: 1 ms × 1.5^i.
fn bin_bounds() -> [f64; LAT_BINS] {
    let mut b = [0.0; LAT_BINS];
    let mut v = 1.0;
    for x in b.iter_mut() {
        *x = v;
        v *= 1.5;
    }
    b
}
const LAT_BINS: usize = 32;

/// The bin of a duration in milliseconds.
pub fn latency_bin(ms: f64) -> usize {
    let bounds = bin_bounds();
    bounds.iter().position(|b| ms <= *b).unwrap_or(LAT_BINS - 1)
}

/// One 10-second bucket of one controller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    /// Bucket start, seconds since the epoch (a multiple of [`BUCKET_SECS`]).
    pub start: u64,
    /// Executions completed.
    pub count: u64,
    /// Failed executions by error code.
    pub errors: BTreeMap<String, u64>,
    /// Latency histogram (bins of [`latency_bin`]).
    pub latency: Vec<u32>,
}

impl Bucket {
    /// The `q` quantile (0..=1) of the bucket's latencies in ms (upper bin bound), or `None`
    /// when the bucket is empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let bounds = bin_bounds();
        let mut seen = 0u64;
        for (i, c) in self.latency.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(bounds[i.min(LAT_BINS - 1)]);
            }
        }
        Some(bounds[LAT_BINS - 1])
    }

    /// Failed executions.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One completed execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionSummary {
    /// Request ID.
    pub request_id: String,
    /// Controller.
    pub controller: String,
    /// Version that ran.
    pub version: String,
    /// `success`, `error` or `timeout`.
    pub status: String,
    /// The error code when it failed.
    pub error_code: Option<String>,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Capabilities used successfully.
    pub capabilities_used: Vec<String>,
    /// Who ran it.
    pub actor: String,
    /// When it completed (RFC 3339).
    pub finished_at: String,
}

/// One controller log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Level (`info`, `warning`, …).
    pub level: String,
    /// The message (truncated to [`MAX_LINE_BYTES`]).
    pub message: String,
}

#[derive(Default)]
struct State {
    series: HashMap<String, VecDeque<Bucket>>,
    recent: VecDeque<ExecutionSummary>,
    logs: HashMap<String, Vec<LogLine>>,
    log_order: VecDeque<String>,
}

/// The node's recent activity (see the module doc).
#[derive(Default)]
pub struct Activity {
    state: Mutex<State>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl Activity {
    /// Record a completed execution (at the current time).
    pub fn record(&self, summary: ExecutionSummary) {
        self.record_at(now_secs(), summary);
    }

    /// Record a completed execution at `now` (seconds since the epoch).
    pub fn record_at(&self, now: u64, summary: ExecutionSummary) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let start = now - now % BUCKET_SECS;
        if !st.series.contains_key(&summary.controller) && st.series.len() >= MAX_SERIES {
            // Evict the controller whose newest bucket is oldest.
            let oldest = st
                .series
                .iter()
                .min_by_key(|(_, b)| b.back().map(|b| b.start).unwrap_or(0))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                st.series.remove(&k);
            }
        }
        let series = st.series.entry(summary.controller.clone()).or_default();
        if series.back().is_none_or(|b| b.start < start) {
            series.push_back(Bucket {
                start,
                latency: vec![0; LAT_BINS],
                ..Bucket::default()
            });
        }
        while series
            .front()
            .is_some_and(|b| b.start + (BUCKETS as u64) * BUCKET_SECS <= start)
        {
            series.pop_front();
        }
        if let Some(b) = series.iter_mut().rev().find(|b| b.start <= start) {
            b.count += 1;
            if let Some(code) = &summary.error_code {
                *b.errors.entry(code.clone()).or_default() += 1;
            }
            let bin = latency_bin(summary.duration_ms);
            if let Some(c) = b.latency.get_mut(bin) {
                *c = c.saturating_add(1);
            }
        }
        st.recent.push_front(summary);
        st.recent.truncate(MAX_RECENT);
    }

    /// Keep a controller log line of `request_id`.
    pub fn log(&self, request_id: &str, level: &str, message: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.logs.contains_key(request_id) {
            st.log_order.push_back(request_id.to_string());
            while st.log_order.len() > MAX_LOGGED_EXECUTIONS {
                if let Some(old) = st.log_order.pop_front() {
                    st.logs.remove(&old);
                }
            }
        }
        let lines = st.logs.entry(request_id.to_string()).or_default();
        if lines.len() < MAX_LINES_PER_EXECUTION {
            lines.push(LogLine {
                level: truncate(level, 16),
                message: truncate(message, MAX_LINE_BYTES),
            });
        }
    }

    /// The newest executions first, optionally of one controller, at most `limit`.
    pub fn recent(&self, controller: Option<&str>, limit: usize) -> Vec<ExecutionSummary> {
        let Ok(st) = self.state.lock() else {
            return vec![];
        };
        st.recent
            .iter()
            .filter(|e| controller.is_none_or(|c| e.controller == c))
            .take(limit)
            .cloned()
            .collect()
    }

    /// One execution, if this node still remembers it.
    pub fn execution(&self, request_id: &str) -> Option<ExecutionSummary> {
        let st = self.state.lock().ok()?;
        st.recent
            .iter()
            .find(|e| e.request_id == request_id)
            .cloned()
    }

    /// The kept log lines of `request_id`.
    pub fn logs(&self, request_id: &str) -> Vec<LogLine> {
        self.state
            .lock()
            .ok()
            .and_then(|st| st.logs.get(request_id).cloned())
            .unwrap_or_default()
    }

    /// Controllers with a time series, sorted.
    pub fn controllers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .state
            .lock()
            .map(|st| st.series.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `controller`'s buckets of the last hour ending at `now`, oldest first, one per
    /// [`BUCKET_SECS`] (empty buckets filled in), exactly [`BUCKETS`] of them.
    pub fn series_at(&self, controller: &str, now: u64) -> Vec<Bucket> {
        let end = now - now % BUCKET_SECS;
        let first = end.saturating_sub((BUCKETS as u64 - 1) * BUCKET_SECS);
        let have: HashMap<u64, Bucket> = self
            .state
            .lock()
            .ok()
            .and_then(|st| {
                st.series
                    .get(controller)
                    .map(|s| s.iter().map(|b| (b.start, b.clone())).collect())
            })
            .unwrap_or_default();
        (0..BUCKETS as u64)
            .map(|i| first + i * BUCKET_SECS)
            .map(|start| {
                have.get(&start).cloned().unwrap_or(Bucket {
                    start,
                    latency: vec![0; LAT_BINS],
                    ..Bucket::default()
                })
            })
            .collect()
    }

    /// [`Activity::series_at`] now.
    pub fn series(&self, controller: &str) -> Vec<Bucket> {
        self.series_at(controller, now_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(c: &str, rid: &str, ms: f64, code: Option<&str>) -> ExecutionSummary {
        ExecutionSummary {
            request_id: rid.into(),
            controller: c.into(),
            version: "1.0.0".into(),
            status: if code.is_some() { "error" } else { "success" }.into(),
            error_code: code.map(str::to_string),
            duration_ms: ms,
            capabilities_used: vec![],
            actor: "admin".into(),
            finished_at: String::new(),
        }
    }

    #[test]
    fn buckets_count_errors_and_percentiles() {
        let a = Activity::default();
        let t0 = 1_000_000;
        for i in 0..100 {
            let code = (i % 10 == 0).then_some("E5001");
            a.record_at(
                t0 + 3,
                exec("A", &format!("r{i}"), f64::from(i) + 0.5, code),
            );
        }
        a.record_at(t0 + 25, exec("A", "late", 5.0, None));
        let s = a.series_at("A", t0 + 25);
        assert_eq!(s.len(), BUCKETS);
        let b = &s[BUCKETS - 3];
        assert_eq!(b.start, t0);
        assert_eq!(b.count, 100);
        assert_eq!(b.error_count(), 10);
        // Bins are 1.5x wide: the quantile is the bin's upper bound, ≥ the true value.
        let p50 = b.quantile(0.5).expect("p50");
        assert!((50.0..=50.0 * 1.5).contains(&p50), "{p50}");
        let p99 = b.quantile(0.99).expect("p99");
        assert!((99.0..=99.0 * 1.5).contains(&p99), "{p99}");
        assert_eq!(s[BUCKETS - 1].count, 1);
        assert_eq!(s[0].quantile(0.5), None);
        // An hour later the old buckets are gone.
        a.record_at(t0 + 3600 + 5, exec("A", "x", 1.0, None));
        let s = a.series_at("A", t0 + 3600 + 5);
        assert_eq!(s.iter().map(|b| b.count).sum::<u64>(), 2);
        assert_eq!(a.recent(Some("A"), 3).len(), 3);
        assert_eq!(a.recent(Some("B"), 3).len(), 0);
        assert_eq!(a.recent(None, 1)[0].request_id, "x");
    }

    #[test]
    fn everything_is_bounded() {
        let a = Activity::default();
        for i in 0..(MAX_RECENT + 10) {
            a.record_at(100, exec("A", &format!("r{i}"), 1.0, None));
        }
        assert_eq!(a.recent(None, usize::MAX).len(), MAX_RECENT);
        assert!(a.execution("r0").is_none());
        assert!(a.execution(&format!("r{}", MAX_RECENT + 9)).is_some());
        for i in 0..(MAX_LOGGED_EXECUTIONS + 5) {
            a.log(&format!("q{i}"), "info", "m");
        }
        assert!(a.logs("q0").is_empty());
        let big = "é".repeat(MAX_LINE_BYTES);
        for _ in 0..(MAX_LINES_PER_EXECUTION + 5) {
            a.log("last", "info", &big);
        }
        let lines = a.logs("last");
        assert_eq!(lines.len(), MAX_LINES_PER_EXECUTION);
        assert!(lines[0].message.len() <= MAX_LINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn latency_bins() {
        for (ms, bin) in [
            (0.0, 0),
            (1.0, 0),
            (1.2, 1),
            (1.5, 1),
            (2.0, 2),
            (1e12, LAT_BINS - 1),
        ] {
            assert_eq!(latency_bin(ms), bin, "{ms}");
        }
    }
}
