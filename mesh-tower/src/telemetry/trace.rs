//! Trace propagation, as an Envoy sidecar does it: a server continues the caller's trace
//! (W3C `traceparent`/`tracestate`, B3 single or multi) with a span of its own, the
//! application's outbound calls made while it serves continue that span, and each upstream
//! attempt gets a span id of its own in the headers it sends. Spans are `tracing` spans
//! (`mesh.server`, `mesh.client`, `mesh.attempt`) carrying the ids, so that any subscriber,
//! an OpenTelemetry one included, sees them; with no subscriber they cost next to nothing.

use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::telemetry::trace_context::{self as tc, Propagation, TraceContext};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::observe::{
    AttemptEnd, AttemptStart, Observer, RequestObserver, RequestStart, ResponseEnd, StreamEnd,
};

const TRACEPARENT: HeaderName = HeaderName::from_static(tc::TRACEPARENT);
const TRACESTATE: HeaderName = HeaderName::from_static(tc::TRACESTATE);
const B3: HeaderName = HeaderName::from_static(tc::B3);
const B3_TRACE_ID: HeaderName = HeaderName::from_static(tc::B3_TRACE_ID);
const B3_SPAN_ID: HeaderName = HeaderName::from_static(tc::B3_SPAN_ID);
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static(tc::B3_PARENT_SPAN_ID);
const B3_SAMPLED: HeaderName = HeaderName::from_static(tc::B3_SAMPLED);
const B3_FLAGS: HeaderName = HeaderName::from_static(tc::B3_FLAGS);

/// How the traces this process starts are written: `traceparent` for W3C readers and the
/// single `b3` header for Envoy's Zipkin tracer (Istio's default), which reads it as it reads
/// the multi-header form; two headers instead of five, which every receiver parses.
const ROOT_PROPAGATION: Propagation = Propagation::B3Single;

/// How a continued trace is written on: in its caller's form, with single-header B3 added to
/// a W3C-only trace, since Envoy's Zipkin tracer does not read `traceparent` (checked against
/// Envoy 1.40: `scripts/real-clients/trace.sh`) and would start a trace of its own.
fn onward(mut ctx: TraceContext) -> TraceContext {
    if ctx.propagation == Propagation::W3c {
        ctx.propagation = Propagation::B3Single;
    }
    ctx
}

tokio::task_local! {
    /// The span of the request this task is serving: what outbound calls continue.
    static CURRENT: TraceContext;
}

/// The trace context of the request the current task is serving (its server span), if a
/// traced server is serving one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` as part of `ctx`: outbound calls it makes through a traced client continue
/// it. The server does this for its application; a task the application spawns takes the
/// context along with this.
pub fn in_trace<F: Future>(ctx: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(ctx, fut)
}

/// Runs `f` (a service's synchronous `call`) as part of `ctx`.
pub(crate) fn in_trace_sync<R>(ctx: &TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx.clone(), f)
}

/// Where traces start and how they are sampled.
#[derive(Debug, Clone)]
pub struct Tracer {
    /// The chance that a trace this process starts is sampled, in [0, 1].
    sampling: f64,
}

impl Default for Tracer {
    /// Istio's default: 1% of the traces a workload starts are sampled.
    fn default() -> Self {
        Self { sampling: 0.01 }
    }
}

impl Tracer {
    /// A tracer sampling Istio's default 1% of the traces it starts.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A tracer sampling `percent` (0 to 100, clamped; what Istio's `sampling` means) of
    /// the traces it starts. Continued traces keep their caller's decision.
    pub fn with_sampling(percent: f64) -> Arc<Self> {
        let sampling = if percent.is_nan() {
            0.0
        } else {
            (percent / 100.0).clamp(0.0, 1.0)
        };
        Arc::new(Self { sampling })
    }

    /// The client stack's observer for tracing alone (with metrics:
    /// [`super::Telemetry::client_observer_traced`]).
    pub fn client_observer(self: &Arc<Self>) -> Arc<dyn Observer> {
        Arc::new(TracingObserver(self.clone()))
    }

    /// A new trace's context (a root span this process starts).
    fn root(&self) -> TraceContext {
        let (trace_id, span_id) =
            IDS.with_borrow_mut(|rng| (rng.random::<u128>().max(1), rng.random::<u64>().max(1)));
        TraceContext {
            trace_id,
            span_id,
            sampled: Some(sampled_by_ratio(self.sampling, trace_id)),
            tracestate: None,
            propagation: ROOT_PROPAGATION,
        }
    }

    /// The context of a new span under `parent` (the caller's or the serving task's span),
    /// or of a new trace; and the parent's span id.
    fn span_under(&self, parent: Option<TraceContext>) -> (TraceContext, Option<u64>) {
        match parent {
            Some(p) => (onward(p.child(new_span_id())), Some(p.span_id)),
            None => (self.root(), None),
        }
    }

    /// The context a client request continues: what its headers carry, else what the
    /// serving task is in, else none; and whether its headers carry no trace header.
    fn parent(&self, headers: &HeaderMap) -> (Option<TraceContext>, bool) {
        match from_headers(headers) {
            (None, true) => (current(), true),
            found => found,
        }
    }

    /// A server's span for a request with `headers`: the caller's trace continued (or a new
    /// one), the headers rewritten to name the server's span so that an application
    /// propagating by itself continues it too.
    pub(crate) fn server_span<B>(
        &self,
        req: &mut http::Request<B>,
    ) -> (TraceContext, tracing::Span) {
        let (parent, fresh) = from_headers(req.headers());
        let (ctx, parent_id) = self.span_under(parent);
        let span = tracing::info_span!(
            "mesh.server",
            otel.kind = "server",
            http.method = %req.method(),
            http.path = req.uri().path(),
            http.status_code = tracing::field::Empty,
            trace_id = ascii(&ctx.trace_id_hex()),
            span_id = ascii(&ctx.span_id_hex()),
            parent_span_id = parent_id.map(hex16).as_deref(),
            sampled = ctx.sampled == Some(true),
        );
        otel::link(&span, &ctx, parent_id);
        inject(req.headers_mut(), &ctx, parent_id, fresh);
        (ctx, span)
    }

    /// A client request's span: a child of its parent (or a new trace).
    pub(crate) fn client_call(&self, request: &RequestStart<'_>) -> TraceCall {
        let (parent, fresh) = self.parent(request.headers);
        let (ctx, parent_id) = self.span_under(parent);
        let span = tracing::info_span!(
            "mesh.client",
            otel.kind = "client",
            http.method = %request.method,
            http.uri = %request.uri,
            trace_id = ascii(&ctx.trace_id_hex()),
            span_id = ascii(&ctx.span_id_hex()),
            parent_span_id = parent_id.map(hex16).as_deref(),
            sampled = ctx.sampled == Some(true),
            http.status_code = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        otel::link(&span, &ctx, parent_id);
        TraceCall {
            ctx,
            span,
            attempt: None,
            fresh,
        }
    }
}

/// Whether a trace this process starts is sampled at `ratio`, decided from its id the way
/// OpenTelemetry's `TraceIdRatioBased` sampler decides (the low 64 bits, halved, against the
/// ratio of 2^63), so that an exporter's sampler and the propagated flag agree.
fn sampled_by_ratio(ratio: f64, trace_id: u128) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    // The low 64 bits are the point: truncation intended.
    ((trace_id as u64) >> 1) < bound
}

thread_local! {
    /// Where ids come from: a small generator per thread, seeded from the thread's secure
    /// one (ids must be unpredictable enough not to collide, not secret; OpenTelemetry's
    /// SDK draws them the same way), a few instructions per id instead of a ChaCha block.
    static IDS: std::cell::RefCell<SmallRng> =
        std::cell::RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

fn new_span_id() -> u64 {
    IDS.with_borrow_mut(|rng| rng.random::<u64>().max(1))
}

fn hex16(id: u64) -> String {
    ascii(&tc::span_hex(id)).to_string()
}

/// The trace context `headers` carry, looked up by pre-parsed names (parsing a name from a
/// string costs more than the lookup).
fn extract(headers: &HeaderMap) -> Result<Option<TraceContext>, tc::TraceHeaderError> {
    if headers.is_empty() {
        return Ok(None);
    }
    TraceContext::extract(|name| {
        let name = match name {
            tc::TRACEPARENT => &TRACEPARENT,
            tc::TRACESTATE => &TRACESTATE,
            tc::B3 => &B3,
            tc::B3_TRACE_ID => &B3_TRACE_ID,
            tc::B3_SPAN_ID => &B3_SPAN_ID,
            tc::B3_SAMPLED => &B3_SAMPLED,
            tc::B3_FLAGS => &B3_FLAGS,
            other => return headers.get(other).and_then(|v| v.to_str().ok()),
        };
        headers.get(name).and_then(|v| v.to_str().ok())
    })
}

/// The context `headers` carry, and whether they carry no trace header at all (so that
/// nothing stale needs removing when new ones go in). A malformed header is ignored: the
/// request starts a new trace.
fn from_headers(headers: &HeaderMap) -> (Option<TraceContext>, bool) {
    match extract(headers) {
        Ok(p) => {
            let fresh = p.is_none();
            (p, fresh)
        }
        Err(e) => {
            tracing::debug!(error = %e, "ignoring the request's trace context");
            (None, false)
        }
    }
}

/// Hex digits are ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Writes `ctx` into `headers` as its own form says: `traceparent` always (and the caller's
/// `tracestate`), B3 besides when the trace came in B3. `fresh`: the headers carry no trace
/// header to replace (a trace this process started for a request without one).
fn inject(headers: &mut HeaderMap, ctx: &TraceContext, parent: Option<u64>, fresh: bool) {
    let value = |bytes: &[u8]| HeaderValue::from_bytes(bytes).ok();
    let traceparent = ctx.traceparent();
    if let Some(v) = value(&traceparent) {
        headers.insert(TRACEPARENT, v);
    }
    match ctx
        .tracestate
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        Some(v) => drop(headers.insert(TRACESTATE, v)),
        None if !fresh => drop(headers.remove(TRACESTATE)),
        None => {}
    }
    match ctx.propagation {
        Propagation::W3c => {}
        Propagation::B3Single => {
            if let Some(v) = value(ctx.b3_from(&traceparent, parent).as_bytes()) {
                headers.insert(B3, v);
            }
        }
        Propagation::B3Multi => {
            if let Some(v) = value(&ctx.trace_id_hex()) {
                headers.insert(B3_TRACE_ID, v);
            }
            if let Some(v) = value(&ctx.span_id_hex()) {
                headers.insert(B3_SPAN_ID, v);
            }
            match parent.and_then(|p| value(&tc::span_hex(p))) {
                Some(v) => drop(headers.insert(B3_PARENT_SPAN_ID, v)),
                None if !fresh => drop(headers.remove(B3_PARENT_SPAN_ID)),
                None => {}
            }
            match ctx.sampled {
                Some(s) => drop(headers.insert(
                    B3_SAMPLED,
                    HeaderValue::from_static(if s { "1" } else { "0" }),
                )),
                None if !fresh => drop(headers.remove(B3_SAMPLED)),
                None => {}
            }
            // Debug was folded into sampled when read.
            if !fresh {
                headers.remove(B3_FLAGS);
            }
        }
    }
}

/// One client request's trace: its span, and its current attempt's.
pub(crate) struct TraceCall {
    ctx: TraceContext,
    span: tracing::Span,
    attempt: Option<tracing::Span>,
    /// The request came without trace headers: none to replace on its attempts.
    fresh: bool,
}

/// The client observer for tracing without metrics.
struct TracingObserver(Arc<Tracer>);

impl Observer for TracingObserver {
    fn on_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestObserver>> {
        Some(Box::new(self.0.client_call(request)))
    }
}

impl RequestObserver for TraceCall {
    /// An attempt is going out: a new span, named in its headers.
    fn on_attempt(&mut self, attempt: &mut AttemptStart<'_>) {
        let ctx = self.ctx.child(new_span_id());
        let span = tracing::info_span!(
            parent: &self.span,
            "mesh.attempt",
            attempt = attempt.attempt,
            cluster = &**attempt.cluster,
            endpoint = %attempt.endpoint,
            span_id = ascii(&ctx.span_id_hex()),
            http.status_code = tracing::field::Empty,
        );
        otel::link(&span, &ctx, Some(self.ctx.span_id));
        inject(attempt.headers, &ctx, Some(self.ctx.span_id), self.fresh);
        self.attempt = Some(span);
    }

    /// The attempt ended.
    fn on_attempt_end(&mut self, end: &AttemptEnd<'_>) {
        if let (Some(span), Some(status)) = (self.attempt.take(), end.status) {
            span.record("http.status_code", status.as_u16());
        }
    }

    /// The response head went back.
    fn on_response(&mut self, response: &ResponseEnd<'_>) {
        self.span
            .record("http.status_code", response.status.as_u16())
            .record("attempts", response.info.attempts);
    }

    fn on_end(self: Box<Self>, _end: &StreamEnd<'_>) {}
}

/// With the `otel` feature, each span's OpenTelemetry twin (tracing-opentelemetry's) gets the
/// trace id, span id and parent the headers carry, so that what an exporter sends and what the
/// next hop continues are one trace.
#[cfg(feature = "otel")]
pub mod otel {
    use std::cell::Cell;

    use mesh_core::telemetry::trace_context::TraceContext;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    thread_local! {
        /// The ids of the span being started on this thread.
        static NEXT: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
    }

    /// The id generator to give the OpenTelemetry SDK's tracer provider: mesh's spans get the
    /// ids mesh propagates, every other span random ones.
    #[derive(Debug, Default)]
    pub struct MeshIdGenerator(RandomIdGenerator);

    impl IdGenerator for MeshIdGenerator {
        fn new_trace_id(&self) -> TraceId {
            match NEXT.with(Cell::get) {
                Some((trace, _)) => TraceId::from(trace),
                None => self.0.new_trace_id(),
            }
        }

        fn new_span_id(&self) -> SpanId {
            match NEXT.with(Cell::get) {
                Some((_, span)) => SpanId::from(span),
                None => self.0.new_span_id(),
            }
        }
    }

    /// Starts `span`'s OpenTelemetry twin now, as `ctx`'s span, child of `parent` (a span of
    /// `ctx`'s trace in another process or task; `None`: a root).
    pub(super) fn link(span: &tracing::Span, ctx: &TraceContext, parent: Option<u64>) {
        if span.is_disabled() {
            return;
        }
        let parent_cx = match parent {
            Some(p) => {
                let flags = if ctx.sampled == Some(true) {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                let state = ctx
                    .tracestate
                    .as_deref()
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(ctx.trace_id),
                    SpanId::from(p),
                    flags,
                    true,
                    state,
                ))
            }
            None => opentelemetry::Context::new(),
        };
        // Without tracing-opentelemetry's layer there is no twin to start.
        if span.set_parent(parent_cx).is_err() {
            return;
        }
        NEXT.with(|n| n.set(Some((ctx.trace_id, ctx.span_id))));
        // Reading the context starts the twin here, on this thread, with the ids just set.
        drop(span.context());
        NEXT.with(|n| n.set(None));
    }
}

/// Without the `otel` feature there is nothing to link.
#[cfg(not(feature = "otel"))]
mod otel {
    use mesh_core::telemetry::trace_context::TraceContext;

    pub(super) fn link(_: &tracing::Span, _: &TraceContext, _: Option<u64>) {}
}
