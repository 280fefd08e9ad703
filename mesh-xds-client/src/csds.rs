//! gRFC A40's Client Status Discovery Service: what this xDS client holds, per resource
//! (its raw value, version, `REQUESTED`/`ACKED`/`NACKED`/`DOES_NOT_EXIST`, the NACK's
//! error), in the shape `istioctl x proxy-status`-style tools and grpcdebug read.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{ResourceState, XdsClient};

/// The CSDS service of one xDS client.
#[derive(Debug, Clone)]
pub struct Csds {
    client: Arc<XdsClient>,
}

impl Csds {
    /// CSDS for `client`, as a tonic service to mount (on the admin endpoint, say).
    pub fn service(client: Arc<XdsClient>) -> ClientStatusDiscoveryServiceServer<Self> {
        ClientStatusDiscoveryServiceServer::new(Self { client })
    }

    /// The client's status now; `exclude_contents` leaves the raw resources out.
    pub async fn client_config(&self, exclude_contents: bool) -> Result<ClientConfig, Status> {
        let stopped = || Status::unavailable("the xDS client has stopped");
        let status = self.client.status().await.ok_or_else(stopped)?;
        let raw = if exclude_contents {
            Vec::new()
        } else {
            self.client.raw_resources().await.ok_or_else(stopped)?
        };
        // Looked up once per resource: a mesh may hold tens of thousands.
        let raw: std::collections::HashMap<(crate::ResourceType, &str), &Any> = raw
            .iter()
            .map(|(t, n, any)| ((*t, n.as_str()), any))
            .collect();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let timestamp = |t: Instant| {
            let at = wall
                .checked_sub(now.saturating_duration_since(t))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let since = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            Timestamp {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(since.subsec_nanos()).unwrap_or_default(),
            }
        };
        let configs = status
            .resources
            .iter()
            .map(|r| {
                let (client_status, error_state) = match &r.state {
                    ResourceState::Requested => (ClientResourceStatus::Requested, None),
                    // Served from the disk cache, not yet confirmed: the control plane has not
                    // acknowledged it on this stream.
                    ResourceState::Cached => (ClientResourceStatus::Requested, None),
                    ResourceState::Acked => (ClientResourceStatus::Acked, None),
                    ResourceState::DoesNotExist => (ClientResourceStatus::DoesNotExist, None),
                    ResourceState::Nacked { version, error } => (
                        ClientResourceStatus::Nacked,
                        Some(UpdateFailureState {
                            details: error.clone(),
                            version_info: version.clone(),
                            last_update_attempt: r.last_updated.map(timestamp),
                            ..Default::default()
                        }),
                    ),
                };
                let type_url = r.resource_type.type_url();
                GenericXdsConfig {
                    type_url: type_url.to_string(),
                    name: r.name.clone(),
                    version_info: r.version.clone(),
                    xds_config: raw
                        .get(&(r.resource_type, r.name.as_str()))
                        .map(|any| (*any).clone()),
                    last_updated: r.last_updated.map(timestamp),
                    client_status: client_status as i32,
                    error_state,
                    ..Default::default()
                }
            })
            .collect();
        Ok(ClientConfig {
            node: Some(self.client.node_proto()),
            generic_xds_configs: configs,
            ..Default::default()
        })
    }

    async fn respond(&self, req: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        if !req.node_matchers.is_empty() {
            return Err(Status::invalid_argument(
                "node_matchers are not supported: this service describes its own process only",
            ));
        }
        Ok(ClientStatusResponse {
            config: vec![self.client_config(req.exclude_resource_contents).await?],
        })
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream =
        Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send + 'static>>;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let this = self.clone();
        let requests = request.into_inner();
        let answers = requests.then(move |req| {
            let this = this.clone();
            async move { this.respond(&req?).await }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.respond(request.get_ref()).await?))
    }
}
