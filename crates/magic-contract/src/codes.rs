//! The public error codes (DESIGN.md "Error codes"). Stable: never renumber.

/// A public error code with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// E1001: controller (or version) not found.
    #[serde(rename = "E1001")]
    ControllerNotFound,
    /// E1002: input failed the contract's input schema.
    #[serde(rename = "E1002")]
    InputInvalid,
    /// E1003: output failed the contract's output schema.
    #[serde(rename = "E1003")]
    OutputInvalid,
    /// E1004: contract invalid.
    #[serde(rename = "E1004")]
    ContractInvalid,
    /// E1005: this name and version is already deployed with different content (versions are
    /// immutable).
    #[serde(rename = "E1005")]
    VersionConflict,
    /// E2001: capability not declared in the contract.
    #[serde(rename = "E2001")]
    CapabilityNotDeclared,
    /// E2002: egress destination not in the allow list.
    #[serde(rename = "E2002")]
    EgressNotAllowed,
    /// E2003: secret key not in the allow list.
    #[serde(rename = "E2003")]
    SecretNotAllowed,
    /// E2004: table not in the allow list.
    #[serde(rename = "E2004")]
    TableNotAllowed,
    /// E2005: queue not in the allow list.
    #[serde(rename = "E2005")]
    QueueNotAllowed,
    /// E2006: cache key outside the declared prefix, or TTL above max_ttl.
    #[serde(rename = "E2006")]
    CacheNotAllowed,
    /// E2007: db:rawsql not approved by policy.
    #[serde(rename = "E2007")]
    RawSqlNotApproved,
    /// E2008: egress resolved to a private or reserved address.
    #[serde(rename = "E2008")]
    EgressPrivateAddress,
    /// E3001: timeout exceeded.
    #[serde(rename = "E3001")]
    Timeout,
    /// E3002: memory limit exceeded.
    #[serde(rename = "E3002")]
    MemoryExceeded,
    /// E3003: temp disk limit exceeded.
    #[serde(rename = "E3003")]
    TempDiskExceeded,
    /// E3004: concurrency limit reached.
    #[serde(rename = "E3004")]
    ConcurrencyLimit,
    /// E4001: not authenticated.
    #[serde(rename = "E4001")]
    NotAuthenticated,
    /// E4002: authenticated but not permitted.
    #[serde(rename = "E4002")]
    NotPermitted,
    /// E4003 (extension): request-rate limit of the identity exceeded (`MAGIC_RATE_LIMIT`).
    #[serde(rename = "E4003")]
    RateLimited,
    /// E5001: controller raised or crashed.
    #[serde(rename = "E5001")]
    ControllerFailed,
    /// E5002: sandbox unavailable.
    #[serde(rename = "E5002")]
    SandboxUnavailable,
    /// E5003: backing service unavailable.
    #[serde(rename = "E5003")]
    BackendUnavailable,
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::ControllerNotFound,
        ErrorCode::InputInvalid,
        ErrorCode::OutputInvalid,
        ErrorCode::ContractInvalid,
        ErrorCode::VersionConflict,
        ErrorCode::CapabilityNotDeclared,
        ErrorCode::EgressNotAllowed,
        ErrorCode::SecretNotAllowed,
        ErrorCode::TableNotAllowed,
        ErrorCode::QueueNotAllowed,
        ErrorCode::CacheNotAllowed,
        ErrorCode::RawSqlNotApproved,
        ErrorCode::EgressPrivateAddress,
        ErrorCode::Timeout,
        ErrorCode::MemoryExceeded,
        ErrorCode::TempDiskExceeded,
        ErrorCode::ConcurrencyLimit,
        ErrorCode::NotAuthenticated,
        ErrorCode::NotPermitted,
        ErrorCode::RateLimited,
        ErrorCode::ControllerFailed,
        ErrorCode::SandboxUnavailable,
        ErrorCode::BackendUnavailable,
    ];

    /// The code as written on the wire (`"E2004"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ControllerNotFound => "E1001",
            ErrorCode::InputInvalid => "E1002",
            ErrorCode::OutputInvalid => "E1003",
            ErrorCode::ContractInvalid => "E1004",
            ErrorCode::VersionConflict => "E1005",
            ErrorCode::CapabilityNotDeclared => "E2001",
            ErrorCode::EgressNotAllowed => "E2002",
            ErrorCode::SecretNotAllowed => "E2003",
            ErrorCode::TableNotAllowed => "E2004",
            ErrorCode::QueueNotAllowed => "E2005",
            ErrorCode::CacheNotAllowed => "E2006",
            ErrorCode::RawSqlNotApproved => "E2007",
            ErrorCode::EgressPrivateAddress => "E2008",
            ErrorCode::Timeout => "E3001",
            ErrorCode::MemoryExceeded => "E3002",
            ErrorCode::TempDiskExceeded => "E3003",
            ErrorCode::ConcurrencyLimit => "E3004",
            ErrorCode::NotAuthenticated => "E4001",
            ErrorCode::NotPermitted => "E4002",
            ErrorCode::RateLimited => "E4003",
            ErrorCode::ControllerFailed => "E5001",
            ErrorCode::SandboxUnavailable => "E5002",
            ErrorCode::BackendUnavailable => "E5003",
        }
    }

    /// Parse a wire code (`"E2004"`).
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ControllerNotFound => 404,
            ErrorCode::InputInvalid | ErrorCode::ContractInvalid => 400,
            ErrorCode::OutputInvalid => 502,
            ErrorCode::VersionConflict => 409,
            ErrorCode::CapabilityNotDeclared
            | ErrorCode::EgressNotAllowed
            | ErrorCode::SecretNotAllowed
            | ErrorCode::TableNotAllowed
            | ErrorCode::QueueNotAllowed
            | ErrorCode::CacheNotAllowed
            | ErrorCode::RawSqlNotApproved
            | ErrorCode::EgressPrivateAddress
            | ErrorCode::NotPermitted => 403,
            ErrorCode::Timeout => 504,
            ErrorCode::MemoryExceeded | ErrorCode::TempDiskExceeded => 507,
            ErrorCode::ConcurrencyLimit | ErrorCode::RateLimited => 429,
            ErrorCode::NotAuthenticated => 401,
            ErrorCode::ControllerFailed => 500,
            ErrorCode::SandboxUnavailable | ErrorCode::BackendUnavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_a_status() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::parse("E9999"), None);
    }
}
