//! Serving in the mesh: a hyper service behind `mesh::Server`, and a tonic service in tonic's
//! own `transport::Server` fed by `mesh::Server::incoming` (the mesh's connections and its
//! per-request layer), under STRICT mTLS and an AuthorizationPolicy from the local control
//! plane, called by mesh clients with two identities. What a service writes is the few lines
//! marked in `main`; the rest sets the scene (control plane, certificates) as istio-agent and
//! istiod would.
//!
//! `cargo run --example servers`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::tower::PeerInfo;
use mesh::xds::Bootstrap;
use mesh::xds::testing::ca::TestCa;
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use tonic_prost::ProstCodec;
use tower::ServiceExt;

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

/// A Greeter as tonic's generated `GreeterServer` would be (hand-rolled to need no protoc).
#[derive(Clone)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

impl tonic::server::UnaryService<HelloRequest> for Greeter {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.spiffe_id.clone());
        let message = format!("hello {} (you are {caller:?})", req.into_inner().name);
        std::future::ready(Ok(tonic::Response::new(HelloReply { message })))
    }
}

impl<B> tower::Service<Request<B>> for Greeter
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(Greeter, req).await)
        })
    }
}

/// The hyper service: answers with the caller's SPIFFE ID.
async fn hello(req: Request<mesh::InboundBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let caller = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.spiffe_id.clone());
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello, {caller:?}\n"
    )))))
}

const YAML: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: default}
spec:
  hosts: [hello.default.svc.cluster.local]
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 127.0.0.1, ports: {http: 18480}, serviceAccount: hello, labels: {app: hello}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter, namespace: default}
spec:
  hosts: [greeter.default.svc.cluster.local]
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: 18481}, serviceAccount: hello, labels: {app: hello}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello, namespace: default}
spec: {host: hello.default.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter, namespace: default}
spec: {host: greeter.default.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: friends-only, namespace: default}
spec:
  selector: {matchLabels: {app: hello}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/friend]}}]}]
";

/// A bootstrap as istio-agent writes it, with `dir`'s certificate files as provider `default`.
fn bootstrap(xds: SocketAddr, ca: &TestCa, dir: &Path, account: &str) -> Bootstrap {
    let leaf = ca.workload(&format!("spiffe://cluster.local/ns/default/sa/{account}"));
    std::fs::create_dir_all(dir).unwrap();
    for (f, body) in [
        ("cert-chain.pem", &leaf.chain_pem),
        ("key.pem", &leaf.key_pem),
        ("root-cert.pem", &ca.root_pem()),
    ] {
        std::fs::write(dir.join(f), body).unwrap();
    }
    let f = |n: &str| dir.join(n).display().to_string();
    Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}],
            "node": {{"id": "sidecar~127.0.0.1~{account}.default~default.svc.cluster.local", "metadata": {{"NAMESPACE": "default"}}}},
            "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
            "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}"}}}}}}}}"#,
            f("cert-chain.pem"),
            f("key.pem"),
            f("root-cert.pem")
        ),
        account,
    )
    .unwrap()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = IstioConfig::default();
    cfg.add_text("servers.yaml", YAML)?;
    let xds = ControlPlane::new(translate(&cfg)?)
        .spawn("127.0.0.1:0".parse()?)
        .await?;
    let ca = TestCa::new("example-ca");
    let dir = tempfile::tempdir()?;

    // What a service writes to serve in the mesh: one server per port.
    let hello_server = mesh::Server::new(
        bootstrap(xds, &ca, &dir.path().join("hello"), "hello"),
        "127.0.0.1:18480".parse()?,
    )?;
    let greeter_server = mesh::Server::new(
        bootstrap(xds, &ca, &dir.path().join("greeter"), "hello"),
        "127.0.0.1:18481".parse()?,
    )?;
    let mut ready = (hello_server.serving(), greeter_server.serving());
    tokio::spawn(hello_server.serve(tower::service_fn(hello)));
    // tonic's own server: the mesh's layer, over the mesh's connections.
    let (layer, connections) = greeter_server.incoming().await?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Greeter)
            .serve_with_incoming(connections),
    );
    ready
        .0
        .wait_for(|s| *s == mesh::tower::ServingState::Serving)
        .await?;
    ready
        .1
        .wait_for(|s| *s == mesh::tower::ServingState::Serving)
        .await?;

    for account in ["friend", "stranger"] {
        let client = mesh::Client::builder()
            .bootstrap(bootstrap(xds, &ca, &dir.path().join(account), account))
            .build()?;
        let req = Request::get("http://hello.default.svc.cluster.local:8080/")
            .body(Full::new(Bytes::new()))?;
        let resp = client.clone().oneshot(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        println!(
            "{account} → hyper server: {status} {}",
            String::from_utf8_lossy(&body).trim()
        );

        let origin = "http://greeter.default.svc.cluster.local:50051".parse()?;
        let mut grpc = tonic::client::Grpc::with_origin(client, origin);
        grpc.ready().await?;
        let req = tonic::Request::new(HelloRequest {
            name: account.into(),
        });
        let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
        match grpc
            .unary(req, path, ProstCodec::<HelloRequest, HelloReply>::default())
            .await
        {
            Ok(r) => println!("{account} → tonic server: {}", r.into_inner().message),
            Err(s) => println!("{account} → tonic server: {:?}: {}", s.code(), s.message()),
        }
    }
    Ok(())
}
