//! The one trait every capability module implements, and the one place that runs it:
//! check against the contract → refuse calls after the deadline → perform (bounded by the
//! deadline) → audit → answer with the capability name for metrics.
//!
//! Must never: perform before the check passed, or answer a call without writing its audit
//! record (a call whose record cannot be written is answered E5003).

use std::time::Instant;

use magic_audit::{AuditEvent, AuditSink};
use magic_contract::ErrorCode;
use serde_json::Value;

use crate::{BrokerError, BrokerReply, ExecutionContext};

/// A call that passed the contract check.
pub(crate) struct Checked<R> {
    /// The capability exercised (`db:read`, `cache:write`, …).
    pub capability: &'static str,
    /// What it targets (table, secret key, cache key, queue, host).
    pub target: String,
    /// The parsed request, ready to perform.
    pub request: R,
}

/// A call refused by the check.
pub(crate) struct Denial {
    /// The capability the call would have exercised, when known.
    pub capability: Option<&'static str>,
    /// The refused target (as the controller wrote it).
    pub target: String,
    /// What the controller sees.
    pub error: BrokerError,
}

impl Denial {
    /// A denial of `target` under `capability`.
    pub fn new(capability: &'static str, target: impl Into<String>, error: BrokerError) -> Self {
        Denial {
            capability: Some(capability),
            target: target.into(),
            error,
        }
    }

    /// A call the broker cannot parse (unknown op, bad arguments).
    pub fn invalid(capability: Option<&'static str>, message: impl Into<String>) -> Self {
        Denial {
            capability,
            target: String::new(),
            error: BrokerError::invalid(message),
        }
    }
}

/// What performing a call produced, with the facts its audit record should carry.
pub(crate) struct Performed {
    /// The value or the error.
    pub result: Result<Value, BrokerError>,
    /// Audit details (row counts, query text, status, latency; never a secret or a value).
    pub details: Value,
}

impl Performed {
    /// A result without audit details.
    pub fn plain(result: Result<Value, BrokerError>) -> Self {
        Performed {
            result,
            details: Value::Null,
        }
    }
}

/// One capability family (`db`, `cache`, …).
#[async_trait::async_trait]
pub(crate) trait CapabilityModule: Send + Sync {
    /// The parsed, checked request.
    type Request: Send;

    /// Parse `args` of `op` and check them against the contract. Pure: no I/O.
    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<Self::Request>, Denial>;

    /// Perform a checked request. Checks that need I/O (rawsql approval) happen here and
    /// answer with a denial code (E2xxx), which is audited as a violation.
    async fn perform(&self, ctx: &ExecutionContext, request: Self::Request) -> Performed;
}

/// True for the codes that mean "the contract or policy refused this".
pub(crate) fn is_denial(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::CapabilityNotDeclared
            | ErrorCode::EgressNotAllowed
            | ErrorCode::SecretNotAllowed
            | ErrorCode::TableNotAllowed
            | ErrorCode::QueueNotAllowed
            | ErrorCode::CacheNotAllowed
            | ErrorCode::RawSqlNotApproved
            | ErrorCode::EgressPrivateAddress
    )
}

/// Run one call through `module`.
pub(crate) async fn run<M: CapabilityModule>(
    module: &M,
    sink: &dyn AuditSink,
    ctx: &ExecutionContext,
    op: &str,
    args: Value,
) -> BrokerReply {
    let checked = match module.check(ctx, op, args) {
        Ok(c) => c,
        Err(denial) => {
            let capability = denial.capability;
            let result = audited(
                sink,
                ctx,
                "capability_violation",
                capability.unwrap_or(""),
                &denial.target,
                Err(denial.error),
                Value::Null,
            )
            .await;
            return BrokerReply { capability, result };
        }
    };
    let Checked {
        capability,
        target,
        request,
    } = checked;
    if Instant::now() >= ctx.deadline {
        let err = BrokerError::new(
            ErrorCode::Timeout,
            "the execution's deadline has passed; the call was not performed",
        );
        let result = audited(
            sink,
            ctx,
            "capability_use",
            capability,
            &target,
            Err(err),
            Value::Null,
        )
        .await;
        return BrokerReply {
            capability: Some(capability),
            result,
        };
    }
    let deadline = tokio::time::Instant::from_std(ctx.deadline);
    let performed = match tokio::time::timeout_at(deadline, module.perform(ctx, request)).await {
        Ok(p) => p,
        Err(_) => Performed::plain(Err(BrokerError::new(
            ErrorCode::Timeout,
            "the execution's deadline passed during the call",
        ))),
    };
    let event = match &performed.result {
        Err(e) if is_denial(e.code) => "capability_violation",
        _ => "capability_use",
    };
    let result = audited(
        sink,
        ctx,
        event,
        capability,
        &target,
        performed.result,
        performed.details,
    )
    .await;
    BrokerReply {
        capability: Some(capability),
        result,
    }
}

/// A call naming a capability family the broker does not know.
pub(crate) async fn unknown(
    sink: &dyn AuditSink,
    ctx: &ExecutionContext,
    family: &str,
    op: &str,
) -> BrokerReply {
    let err = crate::denial::not_declared(
        family,
        &format!("{family}.{op}"),
        "a known capability (db, http, secrets, queue, cache)".into(),
    );
    let result = audited(
        sink,
        ctx,
        "capability_violation",
        family,
        op,
        Err(err),
        Value::Null,
    )
    .await;
    BrokerReply {
        capability: None,
        result,
    }
}

/// Write the audit record of one call; a call whose record cannot be written fails E5003.
async fn audited(
    sink: &dyn AuditSink,
    ctx: &ExecutionContext,
    event: &str,
    capability: &str,
    target: &str,
    result: Result<Value, BrokerError>,
    details: Value,
) -> Result<Value, BrokerError> {
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code.as_str().to_string(),
    };
    let mut details = match details {
        Value::Object(map) => Value::Object(map),
        Value::Null => Value::Object(Default::default()),
        other => serde_json::json!({ "info": other }),
    };
    if let (Err(e), Value::Object(map)) = (&result, &mut details) {
        map.insert("message".into(), Value::String(e.message.clone()));
        if let Some(d) = &e.details {
            map.insert("denial".into(), d.clone());
        }
    }
    let record = AuditEvent {
        event: event.to_string(),
        request_id: Some(ctx.request_id.clone()),
        controller: Some(ctx.controller.clone()),
        version: Some(ctx.version.clone()),
        actor: None,
        capability: (!capability.is_empty()).then(|| capability.to_string()),
        target: Some(target.to_string()),
        outcome: Some(outcome),
        details,
    };
    match sink.append(record).await {
        Ok(()) => result,
        Err(e) => {
            tracing::error!(
                error = %e,
                request_id = %ctx.request_id,
                controller = %ctx.controller,
                "error.type" = "audit_unavailable",
                "capability call refused: its audit record could not be written"
            );
            Err(BrokerError::unavailable("the audit log"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_codes_are_exactly_the_e2_codes() {
        for code in ErrorCode::ALL {
            assert_eq!(is_denial(code), code.as_str().starts_with("E2"), "{code}");
        }
    }
}
