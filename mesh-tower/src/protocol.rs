//! HTTP and gRPC facts the stack and the standalone layers share: how a gRPC request is
//! recognised, `grpc-timeout`, the status maps between the two, how a response is classified
//! for retries and outlier detection, and the responses the stack makes itself.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use mesh_core::Outcome;
use mesh_core::route::{AttemptFailure, FaultAbort};

use crate::body::{MeshBody, empty, full};
use crate::reply::LocalReason;

/// `grpc-status`, parsed once rather than per lookup.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Header naming why the stack answered instead of an upstream.
pub const ERROR_HEADER: &str = "x-mesh-error";
/// Header naming the circuit-breaker threshold that overflowed.
pub const OVERFLOW_HEADER: &str = "x-mesh-overflow";
/// Header carrying the Envoy response flag of a local reply (`NR`, `UO`, `UT`, ...).
pub const FLAGS_HEADER: &str = "x-mesh-response-flags";

/// gRPC status codes the stack produces.
pub mod code {
    /// OK.
    pub const OK: u32 = 0;
    /// UNKNOWN.
    pub const UNKNOWN: u32 = 2;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// PERMISSION_DENIED.
    pub const PERMISSION_DENIED: u32 = 7;
    /// UNIMPLEMENTED.
    pub const UNIMPLEMENTED: u32 = 12;
    /// INTERNAL.
    pub const INTERNAL: u32 = 13;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: u32 = 14;
    /// UNAUTHENTICATED.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether a request (or response) is gRPC: `content-type: application/grpc[+proto|...]`.
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n), as gRPC's spec says.
pub fn grpc_timeout(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Eight digits always fit: no overflow below.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of a response head, if it has a valid one.
pub fn grpc_code(h: &HeaderMap) -> Option<u32> {
    h.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// The HTTP → gRPC status mapping of gRPC's spec (A33 uses it for HTTP aborts).
pub fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// gRPC status → HTTP status, for outlier detection (as Envoy does).
pub fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// How an upstream response went: the failure a retry policy is asked about (`None` is a
/// success), and the outcome outlier detection records. A non-zero `grpc-status` decides
/// first, as the response of a gRPC call is HTTP 200 whatever happened; then the HTTP status.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> (Option<AttemptFailure>, Outcome) {
    match grpc_code(headers) {
        Some(c) if c != code::OK => (
            Some(AttemptFailure::GrpcStatus(c)),
            outcome_for(grpc_to_http(c)),
        ),
        _ if status.as_u16() >= 400 => (
            Some(AttemptFailure::HttpStatus(status.as_u16())),
            outcome_for(status.as_u16()),
        ),
        _ => (None, Outcome::Success),
    }
}

fn outcome_for(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::ServerError(status)
    } else {
        Outcome::Success
    }
}

/// A trailers-only gRPC response with this status.
pub fn grpc_status_response(code: u32, message: &str) -> Response<MeshBody> {
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    r
}

/// The response the stack makes itself for `reason`: its HTTP status with the message as the
/// body, or for gRPC callers its gRPC code; the message in [`ERROR_HEADER`] (the threshold in
/// [`OVERFLOW_HEADER`] for overflows) and the Envoy flag in [`FLAGS_HEADER`].
pub fn local_reply(reason: LocalReason, detail: Option<&str>, grpc: bool) -> Response<MeshBody> {
    let message = match detail {
        Some(d) => format!("{}: {d}", reason.message()),
        None => reason.message().to_string(),
    };
    let mut r = if grpc {
        grpc_status_response(reason.grpc_code(), &message)
    } else {
        let mut r = Response::new(full(format!("{message}\n")));
        *r.status_mut() = reason.http_status();
        r
    };
    let h = r.headers_mut();
    match reason {
        LocalReason::Overflow(resource) => {
            h.insert(
                OVERFLOW_HEADER,
                HeaderValue::from_static(resource.threshold_name()),
            );
        }
        _ => {
            if let Ok(v) = HeaderValue::from_str(&message) {
                h.insert(ERROR_HEADER, v);
            }
        }
    }
    h.insert(FLAGS_HEADER, HeaderValue::from_static(reason.flag()));
    r
}

/// The response of a fault-injection abort: an HTTP abort as its status (for gRPC callers as
/// the gRPC code gRPC's spec maps it to, A33), a gRPC abort as its code.
pub fn fault_abort_reply(abort: FaultAbort, grpc: bool) -> Response<MeshBody> {
    let mut r = match abort {
        FaultAbort::Http(s) if grpc => grpc_status_response(
            if s == 200 {
                code::UNKNOWN
            } else {
                http_to_grpc(s)
            },
            LocalReason::FaultAbort.message(),
        ),
        FaultAbort::Http(s) => {
            let mut r = Response::new(full(LocalReason::FaultAbort.message()));
            *r.status_mut() = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        FaultAbort::Grpc(c) => grpc_status_response(c.min(16), LocalReason::FaultAbort.message()),
    };
    r.headers_mut().insert(
        FLAGS_HEADER,
        HeaderValue::from_static(LocalReason::FaultAbort.flag()),
    );
    r
}

/// `authority` with `-shadow` appended to its host, the name Envoy gives mirrored requests:
/// `ui.default:9080` → `ui.default-shadow:9080`.
pub fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(v: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static(v));
        grpc_timeout(&h)
    }

    #[test]
    fn grpc_timeout_units_and_limits() {
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(
            timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        // gRPC allows at most eight digits; signs, spaces and unknown units are not timeouts.
        assert_eq!(timeout("123456789S"), None);
        assert_eq!(timeout("+1S"), None);
        assert_eq!(timeout("1 S"), None);
        assert_eq!(timeout("1s"), None);
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout(""), None);
    }

    #[test]
    fn grpc_status_decides_before_the_http_status() {
        let mut h = HeaderMap::new();
        h.insert(&GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(
            classify(StatusCode::OK, &h),
            (
                Some(AttemptFailure::GrpcStatus(14)),
                Outcome::ServerError(503)
            )
        );
        // grpc-status 0 on a 503 is still an HTTP failure.
        h.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h),
            (
                Some(AttemptFailure::HttpStatus(503)),
                Outcome::ServerError(503)
            )
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, &HeaderMap::new()),
            (Some(AttemptFailure::HttpStatus(404)), Outcome::Success)
        );
        assert_eq!(
            classify(StatusCode::OK, &HeaderMap::new()),
            (None, Outcome::Success)
        );
    }
}
