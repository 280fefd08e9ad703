//! The fault stage (A33): a delay first, then an abort, before anything is sent upstream.

use http::Response;
use mesh_core::RouteRequest;
use mesh_core::route::FaultConfig;

use crate::body::MeshBody;
use crate::protocol::fault_abort_reply;

/// What the fault filter did to a request.
pub(crate) struct FaultOutcome {
    /// A delay was injected (Envoy's `DI`).
    pub delayed: bool,
    /// The abort response, if the request was aborted (Envoy's `FI`).
    pub abort: Option<Response<MeshBody>>,
}

/// Applies `fault` to a request: sleeps out its delay, and makes its abort reply.
pub(crate) async fn apply(
    fault: &FaultConfig,
    req: &RouteRequest<'_>,
    grpc: bool,
    rng: &mut impl rand::RngCore,
) -> FaultOutcome {
    let decision = fault.decide(req, rng);
    if let Some(d) = decision.delay {
        tokio::time::sleep(d).await;
    }
    FaultOutcome {
        delayed: decision.delay.is_some(),
        abort: decision.abort.map(|a| fault_abort_reply(a, grpc)),
    }
}
