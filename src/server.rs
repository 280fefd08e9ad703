//! One line to serve in the mesh: [`Server`] owns an xDS client built from the gRPC bootstrap,
//! subscribes to the listener named after its address, and serves any tower HTTP service (a
//! hyper `service_fn`, or tonic's `Routes`) behind the server stack: mTLS with the workload
//! certificate, RBAC, the caller's [`mesh_tower::PeerInfo`] in each request's extensions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream as _;
use mesh_core::telemetry::Workload;
use mesh_tower::telemetry::{Telemetry, Tracer};
use mesh_tower::{MeshServer, ServingState};
use mesh_xds_client::{Bootstrap, XdsClient, XdsClientBuilder};
use tokio::sync::watch;

use crate::client::Error;

/// A mesh server on one address.
pub struct Server {
    xds: Arc<XdsClient>,
    inner: MeshServer,
    address: SocketAddr,
    /// This workload, from the bootstrap's node metadata, for its metrics.
    workload: Workload,
    /// The bootstrap's node id, which the peer-metadata exchange sends.
    node_id: String,
    telemetry: Option<Arc<Telemetry>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server on `address` with the bootstrap of `GRPC_XDS_BOOTSTRAP` (or
    /// `GRPC_XDS_BOOTSTRAP_CONFIG`). Must run inside a tokio runtime.
    pub fn from_env(address: SocketAddr) -> Result<Self, Error> {
        Self::new(Bootstrap::from_env()?, address)
    }

    /// A server on `address` with this bootstrap (it needs
    /// `server_listener_resource_name_template`, as istio-agent writes it).
    pub fn new(bootstrap: Bootstrap, address: SocketAddr) -> Result<Self, Error> {
        let workload = bootstrap.workload();
        let node_id = bootstrap.node.id.clone();
        let xds = XdsClientBuilder::new(bootstrap).start()?;
        let name = xds.subscribe_server(address)?;
        let inner = MeshServer::new(name, address, xds.snapshots(), xds.certificates());
        Ok(Self {
            xds: Arc::new(xds),
            inner,
            address,
            workload,
            node_id,
            telemetry: None,
        })
    }

    /// Records Istio's standard metrics for every request served (reporter `destination`,
    /// denied ones included), labelled from the bootstrap's node metadata; read them with
    /// [`Server::telemetry_handle`].
    pub fn telemetry(self) -> Self {
        let t = Telemetry::for_node(self.workload.clone(), &self.node_id);
        self.telemetry_into(t)
    }

    /// The same, into metrics shared with others (a client's, so that one scrape has both).
    pub fn telemetry_into(mut self, telemetry: Arc<Telemetry>) -> Self {
        telemetry.follow_identity(
            self.xds.certificates(),
            mesh_xds_client::certs::DEFAULT_INSTANCE,
        );
        self.inner = self.inner.telemetry(telemetry.clone());
        self.telemetry = Some(telemetry);
        self
    }

    /// Continues each caller's trace (W3C and B3) with a server span, which the
    /// application's calls through a traced [`crate::Client`] continue in turn.
    pub fn tracing(mut self, tracer: Arc<Tracer>) -> Self {
        self.inner = self.inner.tracing(tracer);
        self
    }

    /// An admin endpoint for this server: `/live`, `/ready` (200 only while serving), its
    /// metrics, `/config_dump` and CSDS. Take it before `serve`, which consumes the server.
    pub fn admin(&self) -> mesh_tower::admin::Admin {
        let serving = self.inner.serving();
        let admin =
            mesh_tower::admin::Admin::new(self.telemetry.clone()).ready_while_serving(serving);
        crate::admin::with_xds(admin, &self.xds, "#server")
    }

    /// The metrics it records into, if any (taken before `serve`, which consumes it).
    pub fn telemetry_handle(&self) -> Option<Arc<Telemetry>> {
        self.telemetry.clone()
    }

    /// How long connections of a replaced listener may finish (default 10 minutes).
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.inner = self.inner.drain_grace(grace);
        self
    }

    /// Whether it serves now (its listener is configured), and as that changes. It never
    /// fails to start for want of configuration: until then it closes connections.
    pub fn serving(&self) -> watch::Receiver<ServingState> {
        self.inner.serving()
    }

    /// The xDS client (status, snapshots, certificates).
    pub fn xds(&self) -> &XdsClient {
        &self.xds
    }

    /// For an HTTP server of the application's own, such as tonic's
    /// `Server::builder().layer(layer).add_service(svc).serve_with_incoming(connections)`:
    /// binds the address and gives the per-request layer (routes, JWT, RBAC) and the mesh
    /// connections (mTLS terminated, each with its `PeerInfo`). The connections keep the xDS
    /// client alive. Connections are not drained on a listener change: that server owns them.
    pub async fn incoming(
        self,
    ) -> std::io::Result<(
        mesh_tower::server::MeshServerLayer,
        impl futures_util::Stream<Item = std::io::Result<mesh_tower::server::MeshConnection>>
        + Send
        + 'static,
    )> {
        let listener = tokio::net::TcpListener::bind(self.address).await?;
        let Self { xds, inner, .. } = self;
        let layer = inner.layer();
        let mut connections = Box::pin(inner.incoming(listener));
        let stream = futures_util::stream::poll_fn(move |cx| {
            // Held for as long as the connections are wanted.
            let _xds = &xds;
            connections.as_mut().poll_next(cx)
        });
        Ok((layer, stream))
    }

    /// Binds the address and serves `service` until accepting fails.
    pub async fn serve<S, RB>(self, service: S) -> std::io::Result<()>
    where
        S: mesh_tower::server::AppService<RB>,
        RB: mesh_tower::server::AppBody,
    {
        let listener = tokio::net::TcpListener::bind(self.address).await?;
        let Self { xds, inner, .. } = self;
        let result = inner.serve(listener, service).await;
        drop(xds);
        result
    }
}
