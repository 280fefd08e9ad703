//! The admin endpoint of a mesh client or server ([`crate::Client::admin`],
//! [`crate::Server::admin`]): liveness, readiness, Istio's metrics, `/config_dump` and CSDS,
//! from the xDS client and stacks the process runs.

use std::sync::Arc;

use http_body_util::BodyExt;
use mesh_tower::admin::{Admin, GrpcService};
use mesh_xds_client::XdsClient;
use mesh_xds_client::csds::Csds;

/// Adds `xds` to `admin`: `/config_dump` (listeners, routes, clusters, endpoints,
/// certificates, xDS status), the CSDS service (gRFC A40), and the xDS client's metrics
/// (gRFC A78) in `/stats/prometheus`, labelled `grpc.target` = `target` (the channel's
/// target; `#server` for a server).
pub fn with_xds(admin: Admin, xds: &Arc<XdsClient>, target: &str) -> Admin {
    let x = xds.clone();
    let m = xds.clone();
    let target: Arc<str> = target.into();
    let csds = tower::ServiceExt::<http::Request<mesh_tower::MeshBody>>::map_response(
        Csds::service(xds.clone()),
        |r: http::Response<tonic::body::Body>| r.map(|b| b.map_err(Into::into).boxed_unsync()),
    );
    admin
        .config_dump(move || {
            let x = x.clone();
            async move { mesh_xds_client::dump::config_dump(&x).await }
        })
        .metrics_from(move || {
            let (m, target) = (m.clone(), target.clone());
            async move {
                match m.status().await {
                    Some(status) => mesh_xds_client::dump::openmetrics(&status, &target),
                    None => String::new(),
                }
            }
        })
        .grpc(GrpcService::new(csds))
}
