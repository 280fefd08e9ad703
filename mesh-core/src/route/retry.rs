//! Route retry policies (xDS `RetryPolicy`) for HTTP and gRPC.

use std::time::Duration;

use rand::RngCore;

use crate::error::{FieldError, FieldResult};
use crate::rand_util::below_u64;

/// A set of `retry_on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RetryOn(u32);

impl RetryOn {
    /// Any 5xx response, reset or connect failure (`5xx`).
    pub const FIVE_XX: Self = Self(1);
    /// 502, 503, 504 responses (`gateway-error`).
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// The upstream reset the stream or connection (`reset`).
    pub const RESET: Self = Self(1 << 2);
    /// The connection could not be established (`connect-failure`).
    pub const CONNECT_FAILURE: Self = Self(1 << 3);
    /// A 409 response (`retriable-4xx`).
    pub const RETRIABLE_4XX: Self = Self(1 << 4);
    /// HTTP/2 REFUSED_STREAM (`refused-stream`).
    pub const REFUSED_STREAM: Self = Self(1 << 5);
    /// A status in `retriable_status_codes` (`retriable-status-codes`).
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 6);
    /// gRPC CANCELLED (`cancelled`).
    pub const CANCELLED: Self = Self(1 << 7);
    /// gRPC DEADLINE_EXCEEDED (`deadline-exceeded`).
    pub const DEADLINE_EXCEEDED: Self = Self(1 << 8);
    /// gRPC INTERNAL (`internal`).
    pub const INTERNAL: Self = Self(1 << 9);
    /// gRPC RESOURCE_EXHAUSTED (`resource-exhausted`).
    pub const RESOURCE_EXHAUSTED: Self = Self(1 << 10);
    /// gRPC UNAVAILABLE (`unavailable`).
    pub const UNAVAILABLE: Self = Self(1 << 11);
    /// A reset before any response header (`reset-before-request`).
    pub const RESET_BEFORE_REQUEST: Self = Self(1 << 12);

    const NAMES: [(&'static str, Self); 13] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("cancelled", Self::CANCELLED),
        ("deadline-exceeded", Self::DEADLINE_EXCEEDED),
        ("internal", Self::INTERNAL),
        ("resource-exhausted", Self::RESOURCE_EXHAUSTED),
        ("unavailable", Self::UNAVAILABLE),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
    ];

    /// The empty set.
    pub const NONE: Self = Self(0);

    /// Parses a comma-separated `retry_on` string (trimmed, case-insensitive). Unknown tokens
    /// are returned, not rejected, as Envoy and gRPC ignore them.
    pub fn parse(s: &str) -> (Self, Vec<String>) {
        let mut set = Self::NONE;
        let mut unknown = Vec::new();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match Self::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(token))
            {
                Some((_, flag)) => set = set | *flag,
                None => unknown.push(token.to_string()),
            }
        }
        (set, unknown)
    }

    /// Whether every condition in `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The condition names, in canonical order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .filter(move |(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Why an attempt failed, as the retry policy classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// An HTTP response with this status (only non-2xx statuses are worth asking about).
    HttpStatus(u16),
    /// A gRPC response (header or trailer) with this status code.
    GrpcStatus(u32),
    /// The stream or connection was reset after the request was sent.
    Reset,
    /// The stream was reset before any of the request was sent.
    ResetBeforeRequest,
    /// The connection could not be established.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// An unvalidated retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPolicySpec {
    /// Comma-separated conditions, e.g. `"5xx,connect-failure"`.
    pub retry_on: String,
    /// Retries after the first attempt; `None` means Envoy's default of 1.
    pub num_retries: Option<u32>,
    /// Deadline of each attempt; `None` means the route timeout only.
    pub per_try_timeout: Option<Duration>,
    /// HTTP statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u32>,
    /// Backoff base interval; `None` means 25 ms.
    pub backoff_base: Option<Duration>,
    /// Backoff cap; `None` means ten times the base.
    pub backoff_max: Option<Duration>,
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    retry_on: RetryOn,
    num_retries: u32,
    per_try_timeout: Option<Duration>,
    retriable_status_codes: Box<[u16]>,
    backoff_base: Duration,
    backoff_max: Duration,
}

const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
const MIN_BACKOFF: Duration = Duration::from_millis(1);

impl RetryPolicy {
    /// Validates a spec. Unknown `retry_on` tokens are ignored.
    pub fn new(spec: &RetryPolicySpec) -> FieldResult<Self> {
        let (retry_on, _unknown) = RetryOn::parse(&spec.retry_on);
        let retriable_status_codes = spec
            .retriable_status_codes
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                u16::try_from(c)
                    .ok()
                    .filter(|c| (100..600).contains(c))
                    .ok_or_else(|| {
                        FieldError::new(
                            format!("retriable_status_codes[{i}]"),
                            format!("{c} is not an HTTP status code (100..=599)"),
                        )
                    })
            })
            .collect::<FieldResult<Box<[u16]>>>()?;
        if spec.per_try_timeout == Some(Duration::ZERO) {
            return Err(FieldError::new("per_try_timeout", "must be greater than 0"));
        }
        let backoff_base = crate::time::capped(spec.backoff_base.unwrap_or(DEFAULT_BACKOFF_BASE));
        if backoff_base.is_zero() {
            return Err(FieldError::new(
                "retry_back_off.base_interval",
                "must be greater than 0",
            ));
        }
        let backoff_max = crate::time::capped(
            spec.backoff_max
                .unwrap_or_else(|| backoff_base.saturating_mul(10)),
        );
        if backoff_max < backoff_base {
            return Err(FieldError::new(
                "retry_back_off.max_interval",
                format!(
                    "{backoff_max:?} is less than base_interval {backoff_base:?}; it must be at least the base"
                ),
            ));
        }
        Ok(Self {
            retry_on,
            num_retries: spec.num_retries.unwrap_or(1),
            per_try_timeout: spec.per_try_timeout.map(crate::time::capped),
            retriable_status_codes,
            backoff_base: backoff_base.max(MIN_BACKOFF),
            backoff_max: backoff_max.max(MIN_BACKOFF),
        })
    }

    /// The conditions that trigger a retry.
    pub fn retry_on(&self) -> RetryOn {
        self.retry_on
    }

    /// How many retries may follow the first attempt.
    pub fn num_retries(&self) -> u32 {
        self.num_retries
    }

    /// The deadline of each attempt, if any.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// The statuses retried under `retriable-status-codes`.
    pub fn retriable_status_codes(&self) -> &[u16] {
        &self.retriable_status_codes
    }

    /// Whether an attempt that failed this way may be retried under this policy.
    pub fn is_retriable(&self, failure: AttemptFailure) -> bool {
        let on = self.retry_on;
        match failure {
            AttemptFailure::HttpStatus(s) => {
                (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&s))
                    || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
                    || (on.contains(RetryOn::RETRIABLE_4XX) && s == 409)
                    || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                        && self.retriable_status_codes.contains(&s))
            }
            AttemptFailure::GrpcStatus(code) => {
                let flag = match code {
                    1 => RetryOn::CANCELLED,
                    4 => RetryOn::DEADLINE_EXCEEDED,
                    8 => RetryOn::RESOURCE_EXHAUSTED,
                    13 => RetryOn::INTERNAL,
                    14 => RetryOn::UNAVAILABLE,
                    _ => return false,
                };
                on.contains(flag)
            }
            AttemptFailure::Reset => on.contains(RetryOn::RESET) || on.contains(RetryOn::FIVE_XX),
            AttemptFailure::ResetBeforeRequest => {
                on.contains(RetryOn::RESET_BEFORE_REQUEST)
                    || on.contains(RetryOn::RESET)
                    || on.contains(RetryOn::FIVE_XX)
            }
            AttemptFailure::ConnectFailure => {
                on.contains(RetryOn::CONNECT_FAILURE)
                    || on.contains(RetryOn::FIVE_XX)
                    || on.contains(RetryOn::GATEWAY_ERROR)
            }
            AttemptFailure::RefusedStream => {
                on.contains(RetryOn::REFUSED_STREAM) || on.contains(RetryOn::FIVE_XX)
            }
            AttemptFailure::PerTryTimeout => {
                on.contains(RetryOn::FIVE_XX) || on.contains(RetryOn::GATEWAY_ERROR)
            }
        }
    }

    /// The wait before retry number `retry` (1-based): full jitter over
    /// `min(base * 2^(retry-1), max)`, as Envoy and gRPC (A6) do.
    pub fn backoff<R: RngCore + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let ceiling = self
            .backoff_base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(below_u64(rng, nanos.max(1)))
    }

    /// The base and cap of the backoff.
    pub fn backoff_bounds(&self) -> (Duration, Duration) {
        (self.backoff_base, self.backoff_max)
    }
}
