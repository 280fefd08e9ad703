//! Upstream requests: the request head every attempt is built from, and how one attempt's
//! request is addressed.

use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};

use crate::body::MeshBody;
use crate::protocol::is_grpc;

/// The request head each attempt is built from, moved (not copied) out of the caller's request
/// once routing is done.
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// The service authority the request was routed by (`Host` / `:authority` upstream).
    pub authority: String,
    /// `authority` as a `Host` header value.
    pub host_header: Option<HeaderValue>,
}

impl Head {
    /// Whether the request goes upstream over HTTP/2: it came over HTTP/2, or it is gRPC.
    pub fn wants_h2(&self) -> bool {
        self.version == Version::HTTP_2 || is_grpc(&self.headers)
    }

    /// The upstream request for one attempt, addressed as the original request was (or as
    /// `authority_override`, for mirrors): origin-form with `Host` over HTTP/1.1, scheme and
    /// authority over HTTP/2. The endpoint is the pool's business, not the request's.
    pub fn build(&self, body: MeshBody, authority_override: Option<&str>) -> Request<MeshBody> {
        let path = || {
            self.uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if self.wants_h2() {
            *req.version_mut() = Version::HTTP_2;
            *req.uri_mut() = match authority_override {
                // Reused as is when it already says what goes upstream (h2c: `http`).
                None if self.uri.scheme() == Some(&http::uri::Scheme::HTTP)
                    && self.uri.authority().map(|a| a.as_str()) == Some(&self.authority) =>
                {
                    self.uri.clone()
                }
                a => {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(http::uri::Scheme::HTTP);
                    parts.authority =
                        http::uri::Authority::try_from(a.unwrap_or(&self.authority)).ok();
                    parts.path_and_query = Some(path());
                    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
                }
            };
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(path());
            let host = match authority_override {
                Some(h) => HeaderValue::from_str(h).ok(),
                None => self.host_header.clone(),
            };
            if let Some(v) = host {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        req
    }
}
