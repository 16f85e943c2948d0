//! Prometheus metrics.
//!
//! Owns: the guide's five metric families, process metrics, and the custom metrics controllers
//! emit through `self.metrics` (namespaced per controller, series count capped). Must never:
//! let a controller create unbounded series or metric names outside its namespace.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Custom metrics one controller may define.
pub const MAX_CUSTOM_METRICS_PER_CONTROLLER: usize = 50;
/// Series (label sets) one custom metric may have.
pub const MAX_SERIES_PER_METRIC: usize = 100;
/// Labels one custom sample may carry.
pub const MAX_LABELS: usize = 8;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The runtime's metrics.
pub struct Metrics {
    registry: Registry,
    /// `magic_controller_executions_total{controller,status}`.
    pub executions: IntCounterVec,
    /// `magic_controller_duration_seconds{controller}`.
    pub duration: HistogramVec,
    /// `magic_controller_errors_total{controller,error_code}`.
    pub errors: IntCounterVec,
    /// `magic_capability_usage_total{controller,capability}`.
    pub capability_usage: IntCounterVec,
    /// `magic_resource_limit_exceeded_total{controller,resource}`.
    pub resource_limit_exceeded: IntCounterVec,
    custom: Mutex<HashMap<(String, String), CustomMetric>>,
    /// Recent executions, their log lines and per-controller time series (the console's;
    /// per node, in memory).
    pub activity: crate::console::activity::Activity,
}

#[derive(Debug, Clone, Copy)]
enum CustomKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct CustomMetric {
    kind: CustomKind,
    /// Sorted labels → value (counter/gauge) or (bucket counts, sum, count) for histograms.
    series: BTreeMap<Vec<(String, String)>, Series>,
}

#[derive(Debug, Clone)]
enum Series {
    Value(f64),
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// Why a custom sample was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CustomMetricError {
    /// Name not `^[a-zA-Z_][a-zA-Z0-9_]{0,99}$`.
    #[error("metric name {0:?} is invalid: use letters, digits and _")]
    BadName(String),
    /// Kind not counter/gauge/histogram.
    #[error("metric kind {0:?} is invalid: use counter, gauge or histogram")]
    BadKind(String),
    /// Same name used with another kind.
    #[error("metric {0:?} was already used with another kind")]
    KindConflict(String),
    /// A counter decremented, or a non-finite value.
    #[error("value {0} is not allowed for this metric")]
    BadValue(f64),
    /// Too many metrics, series or labels.
    #[error("custom metric limit reached: {0}")]
    Limit(&'static str),
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

impl Metrics {
    /// Register every family.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let executions = IntCounterVec::new(
            Opts::new(
                "magic_controller_executions_total",
                "Controller executions by outcome (success, error, timeout, rejected).",
            ),
            &["controller", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "magic_controller_duration_seconds",
                "Execution duration, input validation to output validation.",
            )
            .buckets(BUCKETS.to_vec()),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "magic_controller_errors_total",
                "Failed executions by public error code.",
            ),
            &["controller", "error_code"],
        )?;
        let capability_usage = IntCounterVec::new(
            Opts::new(
                "magic_capability_usage_total",
                "Capability calls made by controllers (allowed and denied).",
            ),
            &["controller", "capability"],
        )?;
        let resource_limit_exceeded = IntCounterVec::new(
            Opts::new(
                "magic_resource_limit_exceeded_total",
                "Executions stopped by a resource limit (timeout, memory, temp_disk, concurrency).",
            ),
            &["controller", "resource"],
        )?;
        registry.register(Box::new(executions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(capability_usage.clone()))?;
        registry.register(Box::new(resource_limit_exceeded.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            executions,
            duration,
            errors,
            capability_usage,
            resource_limit_exceeded,
            custom: Mutex::new(HashMap::new()),
            activity: Default::default(),
        })
    }

    /// Record one custom sample from `controller`.
    pub fn record_custom(
        &self,
        controller: &str,
        kind: &str,
        name: &str,
        value: f64,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), CustomMetricError> {
        if !valid_metric_name(name) {
            return Err(CustomMetricError::BadName(name.into()));
        }
        let kind = match kind {
            "counter" => CustomKind::Counter,
            "gauge" => CustomKind::Gauge,
            "histogram" => CustomKind::Histogram,
            other => return Err(CustomMetricError::BadKind(other.into())),
        };
        if !value.is_finite() || (matches!(kind, CustomKind::Counter) && value < 0.0) {
            return Err(CustomMetricError::BadValue(value));
        }
        if labels.len() > MAX_LABELS {
            return Err(CustomMetricError::Limit("too many labels"));
        }
        let mut key_labels = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            if !valid_metric_name(k) || k == "controller" || k == "le" {
                return Err(CustomMetricError::BadName(k.clone()));
            }
            key_labels.push((k.clone(), v.chars().take(200).collect::<String>()));
        }
        let mut custom = self
            .custom
            .lock()
            .map_err(|_| CustomMetricError::Limit("metrics unavailable"))?;
        let key = (controller.to_string(), name.to_string());
        if !custom.contains_key(&key) {
            let count = custom.keys().filter(|(c, _)| c == controller).count();
            if count >= MAX_CUSTOM_METRICS_PER_CONTROLLER {
                return Err(CustomMetricError::Limit(
                    "too many metrics for this controller",
                ));
            }
            custom.insert(
                key.clone(),
                CustomMetric {
                    kind,
                    series: BTreeMap::new(),
                },
            );
        }
        let Some(metric) = custom.get_mut(&key) else {
            return Err(CustomMetricError::Limit("metrics unavailable"));
        };
        let same_kind = matches!(
            (&metric.kind, &kind),
            (CustomKind::Counter, CustomKind::Counter)
                | (CustomKind::Gauge, CustomKind::Gauge)
                | (CustomKind::Histogram, CustomKind::Histogram)
        );
        if !same_kind {
            return Err(CustomMetricError::KindConflict(name.into()));
        }
        if !metric.series.contains_key(&key_labels) && metric.series.len() >= MAX_SERIES_PER_METRIC
        {
            return Err(CustomMetricError::Limit("too many label combinations"));
        }
        let series = metric
            .series
            .entry(key_labels)
            .or_insert_with(|| match kind {
                CustomKind::Histogram => Series::Histogram {
                    buckets: vec![0; BUCKETS.len()],
                    sum: 0.0,
                    count: 0,
                },
                _ => Series::Value(0.0),
            });
        match (series, &metric.kind) {
            (Series::Value(v), CustomKind::Counter) => *v += value,
            (Series::Value(v), CustomKind::Gauge) => *v = value,
            (
                Series::Histogram {
                    buckets,
                    sum,
                    count,
                },
                _,
            ) => {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    if value <= *bound {
                        buckets[i] += 1;
                    }
                }
                *sum += value;
                *count += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        if let Ok(custom) = self.custom.lock() {
            let mut keys: Vec<_> = custom.keys().collect();
            keys.sort();
            for key in keys {
                let Some(metric) = custom.get(key) else {
                    continue;
                };
                let (controller, name) = key;
                let full = format!("magic_custom_{}_{}", controller.to_lowercase(), name);
                let kind = match metric.kind {
                    CustomKind::Counter => "counter",
                    CustomKind::Gauge => "gauge",
                    CustomKind::Histogram => "histogram",
                };
                let _ = writeln!(
                    out,
                    "# HELP {full} Custom metric {name} of controller {controller}."
                );
                let _ = writeln!(out, "# TYPE {full} {kind}");
                for (labels, series) in &metric.series {
                    let mut base = format!("controller=\"{}\"", escape_label(controller));
                    for (k, v) in labels {
                        let _ = write!(base, ",{k}=\"{}\"", escape_label(v));
                    }
                    match series {
                        Series::Value(v) => {
                            let _ = writeln!(out, "{full}{{{base}}} {v}");
                        }
                        Series::Histogram {
                            buckets,
                            sum,
                            count,
                        } => {
                            for (i, bound) in BUCKETS.iter().enumerate() {
                                let _ = writeln!(
                                    out,
                                    "{full}_bucket{{{base},le=\"{bound}\"}} {}",
                                    buckets[i]
                                );
                            }
                            let _ = writeln!(out, "{full}_bucket{{{base},le=\"+Inf\"}} {count}");
                            let _ = writeln!(out, "{full}_sum{{{base}}} {sum}");
                            let _ = writeln!(out, "{full}_count{{{base}}} {count}");
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn families_render_with_their_names() {
        let m = Metrics::new().unwrap();
        m.executions.with_label_values(&["Hello", "success"]).inc();
        m.duration.with_label_values(&["Hello"]).observe(0.01);
        m.errors.with_label_values(&["Hello", "E1002"]).inc();
        m.capability_usage
            .with_label_values(&["Hello", "db:read"])
            .inc();
        m.resource_limit_exceeded
            .with_label_values(&["Hello", "timeout"])
            .inc();
        let text = m.render();
        for needle in [
            "magic_controller_executions_total{controller=\"Hello\",status=\"success\"} 1",
            "magic_controller_duration_seconds_bucket{controller=\"Hello\"",
            "magic_controller_errors_total{controller=\"Hello\",error_code=\"E1002\"} 1",
            "magic_capability_usage_total{capability=\"db:read\",controller=\"Hello\"} 1",
            "magic_resource_limit_exceeded_total{controller=\"Hello\",resource=\"timeout\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn custom_metrics_are_namespaced_and_typed() {
        let m = Metrics::new().unwrap();
        m.record_custom(
            "Inv",
            "counter",
            "synced_total",
            2.0,
            &labels(&[("plan", "pro")]),
        )
        .unwrap();
        m.record_custom(
            "Inv",
            "counter",
            "synced_total",
            1.0,
            &labels(&[("plan", "pro")]),
        )
        .unwrap();
        m.record_custom("Inv", "gauge", "queue_depth", 7.0, &labels(&[]))
            .unwrap();
        m.record_custom("Inv", "histogram", "lat", 0.003, &labels(&[]))
            .unwrap();
        let text = m.render();
        assert!(text.contains("magic_custom_inv_synced_total{controller=\"Inv\",plan=\"pro\"} 3"));
        assert!(text.contains("# TYPE magic_custom_inv_queue_depth gauge"));
        assert!(text.contains("magic_custom_inv_lat_bucket{controller=\"Inv\",le=\"0.005\"} 1"));
        assert!(text.contains("magic_custom_inv_lat_count{controller=\"Inv\"} 1"));
    }

    #[test]
    fn custom_metrics_refuse_bad_input_and_cap_cardinality() {
        let m = Metrics::new().unwrap();
        let none = labels(&[]);
        assert!(matches!(
            m.record_custom("C", "counter", "bad-name", 1.0, &none),
            Err(CustomMetricError::BadName(_))
        ));
        assert!(matches!(
            m.record_custom("C", "summary", "x", 1.0, &none),
            Err(CustomMetricError::BadKind(_))
        ));
        assert!(matches!(
            m.record_custom("C", "counter", "x", -1.0, &none),
            Err(CustomMetricError::BadValue(_))
        ));
        assert!(matches!(
            m.record_custom("C", "gauge", "x", f64::NAN, &none),
            Err(CustomMetricError::BadValue(_))
        ));
        assert!(matches!(
            m.record_custom(
                "C",
                "counter",
                "x",
                1.0,
                &labels(&[("controller", "other")])
            ),
            Err(CustomMetricError::BadName(_))
        ));
        m.record_custom("C", "counter", "k", 1.0, &none).unwrap();
        assert!(matches!(
            m.record_custom("C", "gauge", "k", 1.0, &none),
            Err(CustomMetricError::KindConflict(_))
        ));
        for i in 0..MAX_SERIES_PER_METRIC {
            m.record_custom(
                "C",
                "counter",
                "many",
                1.0,
                &labels(&[("i", &i.to_string())]),
            )
            .unwrap();
        }
        assert!(matches!(
            m.record_custom("C", "counter", "many", 1.0, &labels(&[("i", "overflow")])),
            Err(CustomMetricError::Limit(_))
        ));
        for i in 0..MAX_CUSTOM_METRICS_PER_CONTROLLER {
            let _ = m.record_custom("D", "counter", &format!("m{i}"), 1.0, &none);
        }
        assert!(matches!(
            m.record_custom("D", "counter", "one_more", 1.0, &none),
            Err(CustomMetricError::Limit(_))
        ));
        // Another controller is not affected by D's limit.
        assert!(m
            .record_custom("E", "counter", "one_more", 1.0, &none)
            .is_ok());
    }
}
