//! Trace context as it travels in request headers: W3C Trace Context (`traceparent`,
//! `tracestate`) and Zipkin's B3, in its single-header (`b3`) and multi-header
//! (`x-b3-traceid`, ...) forms. Parsing takes what an Envoy sidecar would accept and rejects the
//! rest (an invalid context starts a new trace rather than continuing a broken one); formatting
//! writes what a sidecar writes.

/// W3C's header carrying the trace id, the parent span id and the sampled flag.
pub const TRACEPARENT: &str = "traceparent";
/// W3C's vendor state, carried unchanged.
pub const TRACESTATE: &str = "tracestate";
/// B3's single header: `{trace id}-{span id}[-{sampled}[-{parent span id}]]`.
pub const B3: &str = "b3";
/// B3 multi: the trace id (16 or 32 hex digits).
pub const B3_TRACE_ID: &str = "x-b3-traceid";
/// B3 multi: the span id.
pub const B3_SPAN_ID: &str = "x-b3-spanid";
/// B3 multi: the parent's span id.
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
/// B3 multi: `1` or `0` (also `true`/`false`).
pub const B3_SAMPLED: &str = "x-b3-sampled";
/// B3 multi: `1` for debug, which implies sampled.
pub const B3_FLAGS: &str = "x-b3-flags";

/// The headers a context is written in, so that a hop answers in the form it was called in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// `traceparent` (and `tracestate`) only.
    W3c,
    /// `traceparent` and the single `b3` header.
    B3Single,
    /// `traceparent` and the `x-b3-*` headers: what Istio's default (Zipkin) tracer reads.
    B3Multi,
}

/// A span's place in a trace: what one hop hands the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (never 0).
    pub trace_id: u128,
    /// The span this context names (never 0): the caller's span when extracted, the new
    /// span when injected.
    pub span_id: u64,
    /// The caller's sampling decision; `None`: deferred to the receiver.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, carried unchanged.
    pub tracestate: Option<String>,
    /// The form it arrived in.
    pub propagation: Propagation,
}

/// Why a trace header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceHeaderError {
    /// The header does not have the shape its format requires.
    #[error("{header}: malformed ({reason})")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn malformed(header: &'static str, reason: &'static str) -> TraceHeaderError {
    TraceHeaderError::Malformed { header, reason }
}

/// Lower-case hex of exactly `len` digits, or `None`. Upper case is refused (W3C requires
/// lower case; B3 implementations write it).
fn hex(s: &str, len: usize) -> Option<u128> {
    if s.len() != len || len > 32 {
        return None;
    }
    s.bytes().try_fold(0u128, |acc, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(d))
    })
}

fn parse_span_id(s: &str, header: &'static str) -> Result<u64, TraceHeaderError> {
    match hex(s, 16) {
        Some(0) => Err(malformed(header, "the span id is zero")),
        // 16 hex digits always fit in 64 bits.
        Some(id) => Ok(id as u64),
        None => Err(malformed(
            header,
            "the span id is not 16 lower-case hex digits",
        )),
    }
}

/// A B3 trace id: 32 hex digits, or 16 (the upper half zero).
fn b3_trace_id(s: &str, header: &'static str) -> Result<u128, TraceHeaderError> {
    match hex(s, 32).or_else(|| hex(s, 16)) {
        Some(0) => Err(malformed(header, "the trace id is zero")),
        Some(id) => Ok(id),
        None => Err(malformed(
            header,
            "the trace id is not 16 or 32 lower-case hex digits",
        )),
    }
}

impl TraceContext {
    /// Parses a W3C `traceparent`: `00-{32 hex}-{16 hex}-{2 hex}`; a later version may add
    /// fields after these, version `ff` is invalid.
    pub fn from_traceparent(value: &str) -> Result<Self, TraceHeaderError> {
        let h = TRACEPARENT;
        let mut parts = value.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(h, "fewer than four fields"));
        };
        let version = hex(version, 2).ok_or(malformed(h, "the version is not 2 hex digits"))?;
        if version == 0xff {
            return Err(malformed(h, "version ff is invalid"));
        }
        if version == 0 && parts.next().is_some() {
            return Err(malformed(h, "version 00 has exactly four fields"));
        }
        let trace_id = match hex(trace, 32) {
            Some(0) => return Err(malformed(h, "the trace id is zero")),
            Some(id) => id,
            None => return Err(malformed(h, "the trace id is not 32 lower-case hex digits")),
        };
        let span_id = parse_span_id(span, h)?;
        let flags = hex(flags, 2).ok_or(malformed(h, "the flags are not 2 hex digits"))?;
        Ok(Self {
            trace_id,
            span_id,
            sampled: Some(flags & 1 == 1),
            tracestate: None,
            propagation: Propagation::W3c,
        })
    }

    /// Parses B3's single header. A header holding only a sampling decision (`0`, `1`, `d`)
    /// carries no context: `Ok(None)`.
    pub fn from_b3(value: &str) -> Result<Option<Self>, TraceHeaderError> {
        let h = B3;
        let sampled = |s: &str| match s {
            "1" | "d" => Ok(Some(true)),
            "0" => Ok(Some(false)),
            _ => Err(malformed(h, "the sampling state is not 0, 1 or d")),
        };
        let mut parts = value.split('-');
        let first = parts.next().unwrap_or_default();
        let Some(span) = parts.next() else {
            sampled(first)?;
            return Ok(None);
        };
        let trace_id = b3_trace_id(first, h)?;
        let span_id = parse_span_id(span, h)?;
        let sampled = match parts.next() {
            Some(s) => sampled(s)?,
            None => None,
        };
        if let Some(parent) = parts.next() {
            parse_span_id(parent, h)?;
        }
        if parts.next().is_some() {
            return Err(malformed(h, "more than four fields"));
        }
        Ok(Some(Self {
            trace_id,
            span_id,
            sampled,
            tracestate: None,
            propagation: Propagation::B3Single,
        }))
    }

    /// Parses B3's multi headers from their values (`x-b3-traceid`, `x-b3-spanid`,
    /// `x-b3-sampled`, `x-b3-flags`). Without a trace id there is no context: `Ok(None)`.
    pub fn from_b3_multi(
        trace_id: Option<&str>,
        span_id: Option<&str>,
        sampled: Option<&str>,
        flags: Option<&str>,
    ) -> Result<Option<Self>, TraceHeaderError> {
        let Some(trace_id) = trace_id else {
            return Ok(None);
        };
        let trace_id = b3_trace_id(trace_id, B3_TRACE_ID)?;
        let span_id = parse_span_id(
            span_id.ok_or(malformed(B3_SPAN_ID, "missing beside x-b3-traceid"))?,
            B3_SPAN_ID,
        )?;
        let debug = flags == Some("1");
        let sampled = match sampled {
            _ if debug => Some(true),
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return Err(malformed(B3_SAMPLED, "not 1, 0, true or false")),
            None => None,
        };
        Ok(Some(Self {
            trace_id,
            span_id,
            sampled,
            tracestate: None,
            propagation: Propagation::B3Multi,
        }))
    }

    /// Reads the context a request carries: `traceparent` first (with its `tracestate`),
    /// then `b3`, then the `x-b3-*` headers; `get` answers a header by lower-case name. A
    /// malformed header is an error, not a fallback to the next form, so that the caller
    /// can say which header was wrong.
    pub fn extract<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Self>, TraceHeaderError> {
        if let Some(tp) = get(TRACEPARENT) {
            let mut ctx = Self::from_traceparent(tp.trim())?;
            ctx.tracestate = get(TRACESTATE)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            // Answer in B3 too when the caller also spoke it.
            if get(B3).is_some() {
                ctx.propagation = Propagation::B3Single;
            } else if get(B3_TRACE_ID).is_some() {
                ctx.propagation = Propagation::B3Multi;
            }
            return Ok(Some(ctx));
        }
        if let Some(b3) = get(B3) {
            return Self::from_b3(b3.trim());
        }
        Self::from_b3_multi(
            get(B3_TRACE_ID).map(str::trim),
            get(B3_SPAN_ID).map(str::trim),
            get(B3_SAMPLED).map(str::trim),
            get(B3_FLAGS).map(str::trim),
        )
    }

    /// This context with a new span: the same trace, sampling and state, `span_id` new.
    pub fn child(&self, span_id: u64) -> Self {
        Self {
            span_id,
            ..self.clone()
        }
    }

    /// The `traceparent` value naming this context's span (an undecided sampling is
    /// written as not sampled, W3C having no third state).
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        if self.sampled == Some(true) {
            out[54] = b'1';
        }
        out
    }

    /// The trace id as B3 and W3C write it (32 hex digits).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [b'0'; 32];
        write_hex(&mut out, self.trace_id);
        out
    }

    /// The span id as 16 hex digits.
    pub fn span_id_hex(&self) -> [u8; 16] {
        span_hex(self.span_id)
    }

    /// The single `b3` value naming this context's span, with `parent` as its parent span
    /// (written only with a sampling state, as B3 requires).
    pub fn b3(&self, parent: Option<u64>) -> B3Value {
        self.b3_from(&self.traceparent(), parent)
    }

    /// [`Self::b3`], taking the ids' digits from this context's `traceparent` (so that a hop
    /// writing both encodes them once).
    pub fn b3_from(&self, traceparent: &[u8; 55], parent: Option<u64>) -> B3Value {
        let mut v = B3Value {
            buf: [0; 68],
            len: 0,
        };
        v.push(&traceparent[3..35]);
        v.push(b"-");
        v.push(&traceparent[36..52]);
        match self.sampled {
            Some(true) => v.push(b"-1"),
            Some(false) => v.push(b"-0"),
            None => {}
        }
        if let (Some(parent), Some(_)) = (parent, self.sampled) {
            v.push(b"-");
            v.push(&span_hex(parent));
        }
        v
    }
}

/// A single-header B3 value, built without allocating: `{32 hex}-{16 hex}[-{0|1}[-{16 hex}]]`.
#[derive(Clone, Copy)]
pub struct B3Value {
    buf: [u8; 68],
    len: usize,
}

impl B3Value {
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        ascii(self.as_bytes())
    }
}

impl std::fmt::Debug for B3Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A span id as B3 and W3C write it: 16 lower-case hex digits.
pub fn span_hex(id: u64) -> [u8; 16] {
    let mut out = [b'0'; 16];
    write_hex(&mut out, u128::from(id));
    out
}

/// Hex digits are ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Writes `value`'s low `out.len()` hex digits into `out`, most significant first.
fn write_hex(out: &mut [u8], value: u128) {
    // Whole bytes, most significant first: `out` holds the low `out.len() / 2` of them (its
    // length is even: 32 or 16 digits).
    let bytes = value.to_be_bytes();
    let skip = bytes.len().saturating_sub(out.len() / 2);
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[skip..]) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Each byte's two hex digits: one load per byte where digits one at a time take two and
/// the shifts (ids are written on every request).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::from_traceparent(TP).unwrap();
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.span_id, 0x00f067aa0ba902b7);
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(&ctx.traceparent()[..], TP.as_bytes());
        let child = ctx.child(1);
        assert_eq!(
            &child.traceparent()[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01"
        );
    }

    #[test]
    fn traceparent_rejects_what_w3c_rejects() {
        let bad = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "fewer than four fields",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff is invalid",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "the trace id is zero",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "the span id is zero",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "the trace id is not 32 lower-case hex digits",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "version 00 has exactly four fields",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x1",
                "the flags are not 2 hex digits",
            ),
        ];
        for (value, reason) in bad {
            assert_eq!(
                TraceContext::from_traceparent(value)
                    .unwrap_err()
                    .to_string(),
                format!("traceparent: malformed ({reason})"),
                "{value}"
            );
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(
            TraceContext::from_traceparent(later).unwrap().sampled,
            Some(false)
        );
    }

    #[test]
    fn b3_single_reads_every_shape() {
        let full = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let ctx = TraceContext::from_b3(full).unwrap().unwrap();
        assert_eq!(ctx.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(ctx.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(ctx.propagation, Propagation::B3Single);
        // A 64-bit trace id and no sampling state.
        let short = TraceContext::from_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1")
            .unwrap()
            .unwrap();
        assert_eq!(short.trace_id, 0x64fe8b2a57d3eff7);
        assert_eq!(short.sampled, None);
        assert_eq!(
            TraceContext::from_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")
                .unwrap()
                .unwrap()
                .sampled,
            Some(true)
        );
        assert_eq!(TraceContext::from_b3("0"), Ok(None));
        assert_eq!(
            TraceContext::from_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-2")
                .unwrap_err()
                .to_string(),
            "b3: malformed (the sampling state is not 0, 1 or d)"
        );
        assert_eq!(
            TraceContext::from_b3("64fe8b2a57d3eff7-e457b5a2")
                .unwrap_err()
                .to_string(),
            "b3: malformed (the span id is not 16 lower-case hex digits)"
        );
        // Written back with a parent span.
        assert_eq!(
            ctx.child(0xa).b3(Some(ctx.span_id)).as_str(),
            "80f198ee56343ba864fe8b2a57d3eff7-000000000000000a-1-e457b5a2e4d86bd1"
        );
        assert_eq!(
            short.b3(Some(1)).as_str(),
            "000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1"
        );
    }

    #[test]
    fn b3_multi_reads_flags_and_sampling() {
        let ctx = TraceContext::from_b3_multi(
            Some("463ac35c9f6413ad"),
            Some("a2fb4a1d1a96d312"),
            Some("0"),
            Some("1"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ctx.trace_id, 0x463ac35c9f6413ad);
        assert_eq!(ctx.sampled, Some(true), "debug implies sampled");
        assert_eq!(ctx.propagation, Propagation::B3Multi);
        assert_eq!(
            TraceContext::from_b3_multi(None, Some("a"), None, None),
            Ok(None)
        );
        assert_eq!(
            TraceContext::from_b3_multi(Some("463ac35c9f6413ad"), None, None, None)
                .unwrap_err()
                .to_string(),
            "x-b3-spanid: malformed (missing beside x-b3-traceid)"
        );
        assert_eq!(
            TraceContext::from_b3_multi(
                Some("463ac35c9f6413ad"),
                Some("a2fb4a1d1a96d312"),
                Some("yes"),
                None
            )
            .unwrap_err()
            .to_string(),
            "x-b3-sampled: malformed (not 1, 0, true or false)"
        );
    }

    #[test]
    fn extract_prefers_traceparent_and_keeps_its_state() {
        let headers = [
            (TRACEPARENT, TP),
            (TRACESTATE, "congo=t61rcWkgMzE"),
            (B3_TRACE_ID, "463ac35c9f6413ad"),
            (B3_SPAN_ID, "a2fb4a1d1a96d312"),
        ];
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let ctx = TraceContext::extract(get).unwrap().unwrap();
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(ctx.propagation, Propagation::B3Multi);
        let b3_only =
            |name: &str| (name == B3_TRACE_ID || name == B3_SPAN_ID).then_some("463ac35c9f6413ad");
        let ctx = TraceContext::extract(b3_only).unwrap().unwrap();
        assert_eq!(
            (ctx.trace_id, ctx.span_id),
            (0x463ac35c9f6413ad, 0x463ac35c9f6413ad)
        );
        assert_eq!(TraceContext::extract(|_| None), Ok(None));
    }
}
