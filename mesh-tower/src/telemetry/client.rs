//! The client stack's observer: each request with reporter `source`.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;

use super::trace::{TraceCall, Tracer};
use super::{METADATA, Series, Telemetry, grpc_status};
use crate::observe::{
    AttemptEnd, AttemptStart, Observer, RequestObserver, RequestStart, ResponseEnd, StreamEnd,
};
use crate::reply::ResponseFlags;

/// The client stack's observer.
pub(super) struct ClientObserver(pub(super) Arc<Telemetry>, pub(super) Option<Arc<Tracer>>);

impl Observer for ClientObserver {
    fn on_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestObserver>> {
        Some(Box::new(ClientCall {
            telemetry: self.0.clone(),
            grpc: request.grpc,
            cluster: None,
            labels: None,
            code: 0,
            grpc_status: None,
            flags: ResponseFlags::default(),
            exchanged: None,
            peer: None,
            trace: self.1.as_ref().map(|t| t.client_call(request)),
        }))
    }
}

/// One request, as the client observer follows it.
struct ClientCall {
    telemetry: Arc<Telemetry>,
    grpc: bool,
    cluster: Option<Arc<str>>,
    /// The last attempt's endpoint metadata.
    labels: Option<Arc<BTreeMap<String, String>>>,
    code: u16,
    grpc_status: Option<u32>,
    flags: ResponseFlags,
    /// The server's `x-envoy-peer-metadata`, if it answered with one.
    exchanged: Option<HeaderValue>,
    /// The last attempt's endpoint identity (mTLS).
    peer: Option<Arc<str>>,
    trace: Option<TraceCall>,
}

impl RequestObserver for ClientCall {
    fn on_attempt(&mut self, attempt: &mut AttemptStart<'_>) {
        // This workload's metadata goes to mesh workloads only (endpoints istiod describes
        // with `istio.workload`), not to services outside the mesh, which would learn the
        // workload's names, labels and node id (what istio/proxy's opt-in stripping is for).
        if attempt.labels.contains_key("workload") {
            self.telemetry.announce(attempt.headers);
        }
        if let Some(t) = &mut self.trace {
            t.on_attempt(attempt);
        }
    }

    fn on_attempt_end(&mut self, end: &AttemptEnd<'_>) {
        if let Some(t) = &mut self.trace {
            t.on_attempt_end(end);
        }
        if self
            .labels
            .as_ref()
            .is_none_or(|l| !Arc::ptr_eq(l, end.labels))
        {
            self.labels = Some(end.labels.clone());
        }
        self.peer.clone_from(&end.peer_identity);
    }

    fn on_response(&mut self, response: &ResponseEnd<'_>) {
        if let Some(t) = &mut self.trace {
            t.on_response(response);
        }
        self.cluster = response.info.cluster.clone();
        self.code = response.status.as_u16();
        self.flags = response.info.flags;
        self.exchanged = response.headers.get(&METADATA).cloned();
        // A trailers-only gRPC response (and every local reply) has its status here.
        self.grpc_status = if self.grpc {
            grpc_status(response.headers)
        } else {
            None
        };
    }

    fn on_end(self: Box<Self>, end: &StreamEnd<'_>) {
        let grpc_status = match end.trailers {
            Some(trailers) if self.grpc => grpc_status(trailers).or(self.grpc_status),
            _ => self.grpc_status,
        };
        // Most requests go to a known endpoint of a known cluster: their series is found by
        // pointers and the id of the server's metadata, without hashing names.
        let ClientCall {
            telemetry: t,
            grpc,
            cluster,
            labels,
            code,
            flags,
            exchanged,
            peer,
            ..
        } = *self;
        let named_by = (cluster, labels, peer);
        let key = t.client_key(
            &named_by,
            exchanged.as_ref(),
            grpc,
            code,
            grpc_status,
            flags,
        );
        if Telemetry::record_client(&key, end) {
            return;
        }
        let workload = named_by
            .1
            .as_ref()
            .and_then(|l| l.get("workload"))
            .map_or("", String::as_str);
        let exchanged = exchanged
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let series = Series {
            peers: t.client_peers(
                named_by.0.as_deref().unwrap_or_default(),
                workload,
                exchanged,
                named_by.2.as_deref().unwrap_or_default(),
            ),
            grpc,
            code,
            grpc_status,
            flags,
        };
        let handles = t.handles(series);
        handles.add(end);
        Telemetry::remember_client(key, named_by, handles);
    }
}
