//! Searching the audit log: the newest records matching a request ID, controller, actor and/or
//! event, a page at a time, and the latest signed checkpoint (the operator console's audit view).
//!
//! Owns: [`SearchFilter`] and [`AuditChain::search`]. Must never: build SQL from the filter's
//! values (they are bound; only fixed column names are written into the statement), or return
//! more than [`MAX_SEARCH_PAGE`] records at once.

use crate::checkpoint::Checkpoint;
use crate::record::AuditRecord;
use crate::{db, AuditChain, AuditError};

/// Most records one search returns.
pub const MAX_SEARCH_PAGE: u64 = 500;

/// What to look for; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// Exact request ID.
    pub request_id: Option<String>,
    /// Exact controller name.
    pub controller: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact event name (`execution_start`, `admin_action`, …).
    pub event: Option<String>,
    /// Only records with a seq below this one (the next page).
    pub before: Option<u64>,
}

impl SearchFilter {
    /// The `(column, value)` equalities of the filter; blank values are ignored.
    pub fn equalities(&self) -> Vec<(&'static str, &str)> {
        [
            ("request_id", &self.request_id),
            ("controller", &self.controller),
            ("actor", &self.actor),
            ("event", &self.event),
        ]
        .into_iter()
        .filter_map(|(c, v)| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| (c, v))
        })
        .collect()
    }
}

impl AuditChain {
    /// The newest records matching `filter`, newest first, at most `limit` (capped at
    /// [`MAX_SEARCH_PAGE`]). Served by the `request_id` and `(controller, seq)` indexes.
    pub async fn search(
        &self,
        filter: &SearchFilter,
        limit: u64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        db::search_records(
            self.inner.store.pool(),
            &filter.equalities(),
            filter.before,
            limit.clamp(1, MAX_SEARCH_PAGE),
        )
        .await
    }

    /// The newest signed checkpoint, if any was written.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(
            db::checkpoints_before(self.inner.store.pool(), u64::MAX >> 1, 1)
                .await?
                .into_iter()
                .next(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_fields_match_anything() {
        let f = SearchFilter {
            request_id: Some("r1".into()),
            controller: Some("  ".into()),
            actor: None,
            event: Some("execution_start".into()),
            before: Some(3),
        };
        assert_eq!(
            f.equalities(),
            vec![("request_id", "r1"), ("event", "execution_start")]
        );
        assert!(SearchFilter::default().equalities().is_empty());
    }
}
