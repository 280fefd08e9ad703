//! Why the stack answered a request itself, typed: each reason has its HTTP status, its gRPC
//! code and its Envoy response flag, so that callers, logs and metrics read one value.

use http::StatusCode;
use mesh_core::BreakerResource;

use crate::protocol::code;

/// Why the stack answered instead of an upstream (a local reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalReason {
    /// No listener, virtual host or route matched, or the route does not forward.
    NoRoute,
    /// The route names a cluster that is not in the snapshot (or has no endpoint set).
    NoCluster,
    /// Every endpoint of the cluster is unhealthy, ejected or absent.
    NoHealthyUpstream,
    /// A circuit-breaker threshold refused the request.
    Overflow(BreakerResource),
    /// The route's timeout (or the caller's `grpc-timeout`) expired.
    RouteTimeout,
    /// The last attempt's per-try timeout expired.
    PerTryTimeout,
    /// Connecting to the endpoint failed.
    ConnectFailure,
    /// The upstream connection or stream was reset.
    Reset,
    /// Fault injection aborted the request (the status is the fault's own).
    FaultAbort,
    /// Reading the caller's request body failed.
    RequestBody,
    /// The client's configuration for this target did not arrive in time.
    ConfigTimeout,
    /// The stack can no longer get configuration (the xDS client stopped).
    ConfigUnavailable,
}

impl LocalReason {
    /// The HTTP status of the local reply.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::RouteTimeout | Self::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestBody => StatusCode::BAD_REQUEST,
            Self::FaultAbort => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoCluster
            | Self::NoHealthyUpstream
            | Self::Overflow(_)
            | Self::ConnectFailure
            | Self::Reset
            | Self::ConfigTimeout
            | Self::ConfigUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code of the local reply (A31: a route timeout is DEADLINE_EXCEEDED).
    pub fn grpc_code(self) -> u32 {
        match self {
            Self::NoRoute => code::UNIMPLEMENTED,
            Self::RouteTimeout => code::DEADLINE_EXCEEDED,
            Self::RequestBody => code::INTERNAL,
            Self::FaultAbort => code::UNKNOWN,
            Self::NoCluster
            | Self::NoHealthyUpstream
            | Self::Overflow(_)
            | Self::PerTryTimeout
            | Self::ConnectFailure
            | Self::Reset
            | Self::ConfigTimeout
            | Self::ConfigUnavailable => code::UNAVAILABLE,
        }
    }

    /// Envoy's response flag for it, as access logs and Istio's `response_flags` label say.
    pub fn flag(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoCluster => "NC",
            Self::NoHealthyUpstream => "UH",
            Self::Overflow(_) => "UO",
            Self::RouteTimeout | Self::PerTryTimeout => "UT",
            Self::ConnectFailure => "UF",
            Self::Reset => "UR",
            Self::FaultAbort => "FI",
            Self::RequestBody => "DPE",
            // No Envoy flag fits a client that waits for its configuration; NC is closest.
            Self::ConfigTimeout | Self::ConfigUnavailable => "NC",
        }
    }

    /// A short message for people, as the reply's body, `x-mesh-error` or `grpc-message`.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoRoute => "no route",
            Self::NoCluster => "no cluster",
            Self::NoHealthyUpstream => "no healthy upstream",
            Self::Overflow(r) => r.threshold_name(),
            Self::RouteTimeout => "upstream request timeout",
            Self::PerTryTimeout => "upstream per-try timeout",
            Self::ConnectFailure => "upstream connect error",
            Self::Reset => "upstream reset",
            Self::FaultAbort => "fault filter abort",
            Self::RequestBody => "request body",
            Self::ConfigTimeout => "configuration not received in time",
            Self::ConfigUnavailable => "configuration unavailable",
        }
    }
}

impl std::fmt::Display for LocalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Envoy's response flags for one request, the `response_flags` of Istio's metrics: the local
/// reason if the stack answered, plus what happened on the way (a delay fault, retries that
/// ran out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResponseFlags {
    /// Why the stack answered itself, if it did.
    pub reason: Option<LocalReason>,
    /// A fault delay was injected (`DI`).
    pub delayed: bool,
    /// The retries allowed ran out on a retriable failure (`URX`).
    pub retries_exhausted: bool,
}

impl std::fmt::Display for ResponseFlags {
    /// Envoy's form: comma-separated short names, or `-` when there are none.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = [
            self.reason.map(LocalReason::flag),
            self.delayed.then_some("DI"),
            self.retries_exhausted.then_some("URX"),
        ];
        let mut any = false;
        for flag in flags.into_iter().flatten() {
            if any {
                f.write_str(",")?;
            }
            f.write_str(flag)?;
            any = true;
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_does() {
        assert_eq!(ResponseFlags::default().to_string(), "-");
        let f = ResponseFlags {
            reason: Some(LocalReason::ConnectFailure),
            delayed: true,
            retries_exhausted: true,
        };
        assert_eq!(f.to_string(), "UF,DI,URX");
        let f = ResponseFlags {
            retries_exhausted: true,
            ..Default::default()
        };
        assert_eq!(f.to_string(), "URX");
    }

    #[test]
    fn a_grpc_route_timeout_is_deadline_exceeded_and_a_per_try_timeout_unavailable() {
        assert_eq!(
            LocalReason::RouteTimeout.grpc_code(),
            code::DEADLINE_EXCEEDED
        );
        assert_eq!(LocalReason::PerTryTimeout.grpc_code(), code::UNAVAILABLE);
        assert_eq!(
            LocalReason::Overflow(BreakerResource::Retries).message(),
            "max_retries"
        );
    }
}
