//! The read-only view of a request that routing and hashing look at.

use std::borrow::Cow;

use http::{HeaderMap, Method, Uri};

/// What the router sees of one request: method, authority, path, query and headers.
///
/// Borrowed from the caller's `http::Request`; building it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    method: &'a Method,
    scheme: Option<&'a str>,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl<'a> RouteRequest<'a> {
    /// A view of a request. The authority comes from the URI, else from the `Host` header.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        Self {
            method,
            scheme: uri.scheme_str(),
            authority,
            path,
            query: uri.query(),
            headers,
        }
    }

    /// A view of an `http::Request`'s head.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        Self::new(req.method(), req.uri(), req.headers())
    }

    /// Replaces the authority used for virtual-host selection (for `xds:///host:port` targets,
    /// where the data-plane authority is the target, not the URI).
    pub fn with_authority(mut self, authority: &'a str) -> Self {
        self.authority = authority;
        self
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The authority (`host[:port]`) used for virtual-host selection.
    pub fn authority(&self) -> &'a str {
        self.authority
    }

    /// The path, without the query string.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The value a header matcher sees for `name` (lowercase): pseudo-headers `:method`,
    /// `:authority`, `:path` and `:scheme` come from the request line; repeated headers are
    /// joined with `,`; `-bin` headers are treated as absent.
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        if let Some(pseudo) = name.strip_prefix(':') {
            return match pseudo {
                "method" => Some(Cow::Borrowed(self.method.as_str())),
                "authority" => Some(Cow::Borrowed(self.authority)),
                "path" => Some(Cow::Borrowed(self.path)),
                "scheme" => self.scheme.map(Cow::Borrowed),
                _ => None,
            };
        }
        self.header_value(&http::HeaderName::from_bytes(name.as_bytes()).ok()?)
    }

    /// As [`RouteRequest::header`] for a regular (not pseudo) header, by parsed name: the hot
    /// path, since matchers parse their names once.
    pub fn header_value(&self, name: &http::HeaderName) -> Option<Cow<'a, str>> {
        if name.as_str().ends_with("-bin") {
            return None;
        }
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = first.into_owned();
                for v in std::iter::once(second).chain(values) {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    /// The value of the first query parameter called `name` (not percent-decoded), `Some("")`
    /// for a bare `?name`.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}
