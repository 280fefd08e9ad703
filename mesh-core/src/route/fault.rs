//! Fault injection config (xDS `HTTPFault`) and the per-request decision, as Envoy and gRPC A33.

use std::time::Duration;

use rand::RngCore;

use crate::error::{FieldError, FieldResult};
use crate::fraction::{Fraction, MILLION, sample_per_million};
use crate::request::RouteRequest;

/// Header giving a delay in milliseconds for header-controlled delays.
pub const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// Header lowering the delay percentage (numerator over the configured denominator).
pub const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
/// Header giving an HTTP status for header-controlled aborts.
pub const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
/// Header giving a gRPC status for header-controlled aborts.
pub const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
/// Header lowering the abort percentage (numerator over the configured denominator).
pub const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";

/// How a fault delay is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDelayKind {
    /// A fixed delay.
    Fixed(Duration),
    /// The delay comes from the `x-envoy-fault-delay-request` header.
    HeaderControlled,
}

/// How a fault abort is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAbortKind {
    /// Respond with this HTTP status (200..=599).
    Http(u32),
    /// Respond with this gRPC status.
    Grpc(u32),
    /// The status comes from the abort headers.
    HeaderControlled,
}

/// An unvalidated fault delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelaySpec {
    /// What to delay by.
    pub kind: FaultDelayKind,
    /// The share of requests delayed (unset in xDS means 0%).
    pub percentage: Fraction,
}

/// An unvalidated fault abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbortSpec {
    /// What to abort with.
    pub kind: FaultAbortKind,
    /// The share of requests aborted (unset in xDS means 0%).
    pub percentage: Fraction,
}

/// An unvalidated fault injection config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSpec {
    /// Optional delay.
    pub delay: Option<FaultDelaySpec>,
    /// Optional abort.
    pub abort: Option<FaultAbortSpec>,
    /// Process-wide cap on concurrently faulted requests; `Some(0)` disables faults.
    pub max_active_faults: Option<u32>,
}

/// A validated fault injection config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultConfig {
    spec: FaultSpec,
}

/// An abort chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAbort {
    /// Respond with this HTTP status.
    Http(u16),
    /// End the call with this gRPC status.
    Grpc(u32),
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long before sending.
    pub delay: Option<Duration>,
    /// Then fail with this instead of sending.
    pub abort: Option<FaultAbort>,
}

impl FaultDecision {
    /// Whether this request is faulted at all.
    pub fn is_fault(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }
}

impl FaultConfig {
    /// Validates a spec: fixed HTTP abort statuses must be in `200..600`.
    pub fn new(spec: &FaultSpec) -> FieldResult<Self> {
        if let Some(FaultAbortSpec {
            kind: FaultAbortKind::Http(status),
            ..
        }) = spec.abort
            && !(200..600).contains(&status)
        {
            return Err(FieldError::new(
                "abort.http_status",
                format!("{status} is not in 200..600"),
            ));
        }
        Ok(Self { spec: *spec })
    }

    /// The validated spec.
    pub fn spec(&self) -> &FaultSpec {
        &self.spec
    }

    /// The process-wide cap on concurrently faulted requests.
    pub fn max_active_faults(&self) -> Option<u32> {
        self.spec.max_active_faults
    }

    /// Decides the delay and abort for one request; delay and abort are drawn independently.
    /// Percentage headers can only lower the configured share, never raise it.
    pub fn decide<R: RngCore + ?Sized>(
        &self,
        req: &RouteRequest<'_>,
        rng: &mut R,
    ) -> FaultDecision {
        let mut decision = FaultDecision::default();
        if let Some(delay) = &self.spec.delay {
            let duration = match delay.kind {
                FaultDelayKind::Fixed(d) => Some(d),
                FaultDelayKind::HeaderControlled => {
                    header_number(req, DELAY_HEADER).map(Duration::from_millis)
                }
            };
            if let Some(d) = duration
                && sample_per_million(share(req, DELAY_PERCENT_HEADER, delay.percentage), rng)
            {
                decision.delay = Some(d);
            }
        }
        if let Some(abort) = &self.spec.abort {
            let status = match abort.kind {
                FaultAbortKind::Http(s) => u16::try_from(s).ok().map(FaultAbort::Http),
                FaultAbortKind::Grpc(c) => Some(FaultAbort::Grpc(c)),
                FaultAbortKind::HeaderControlled => header_number(req, ABORT_HEADER)
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (200..600).contains(s))
                    .map(FaultAbort::Http)
                    .or_else(|| {
                        header_number(req, ABORT_GRPC_HEADER)
                            .and_then(|c| u32::try_from(c).ok())
                            .map(FaultAbort::Grpc)
                    }),
            };
            if let Some(s) = status
                && sample_per_million(share(req, ABORT_PERCENT_HEADER, abort.percentage), rng)
            {
                decision.abort = Some(s);
            }
        }
        decision
    }
}

fn header_number(req: &RouteRequest<'_>, name: &str) -> Option<u64> {
    req.header(name)?.trim().parse().ok()
}

/// The configured share in ppm, lowered (never raised) by a percentage header whose value
/// replaces the numerator.
fn share(req: &RouteRequest<'_>, header: &str, configured: Fraction) -> u32 {
    let base = configured.as_per_million();
    match header_number(req, header).and_then(|n| u32::try_from(n).ok()) {
        Some(n) => Fraction {
            numerator: n,
            ..configured
        }
        .as_per_million()
        .min(base),
        None => base.min(MILLION),
    }
}
