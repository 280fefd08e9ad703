//! The admin endpoint of a mesh client or server ([`crate::Client::admin`],
//! [`crate::Server::admin`]): liveness, readiness, Istio's metrics, `/config_dump` and CSDS,
//! from the xDS client and stacks the process runs.

use std::sync::Arc;

use http_body_util::BodyExt;
use mesh_tower::admin::{Admin, GrpcService};
use mesh_xds_client::XdsClient;
use mesh_xds_client::csds::Csds;

/// Adds `xds`'s configuration to `admin`: `/config_dump` (listeners, routes, clusters,
/// endpoints, certificates, xDS status) and the CSDS service (gRFC A40).
pub fn with_xds(admin: Admin, xds: &Arc<XdsClient>) -> Admin {
    let x = xds.clone();
    let csds = tower::ServiceExt::<http::Request<mesh_tower::MeshBody>>::map_response(
        Csds::service(xds.clone()),
        |r: http::Response<tonic::body::Body>| r.map(|b| b.map_err(Into::into).boxed_unsync()),
    );
    admin
        .config_dump(move || {
            let x = x.clone();
            async move { mesh_xds_client::dump::config_dump(&x).await }
        })
        .grpc(GrpcService::new(csds))
}
