//! A tonic client over the mesh stack: `tonic::client::Grpc` takes `MeshService` as its
//! transport (it is a `GrpcService`), and calls reach a gRPC server picked from EDS.

use std::convert::Infallible;
use std::time::Duration;

use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use mesh_tower::{MeshConfig, MeshService};
use mesh_xds_client::{Bootstrap, XdsClientBuilder};
use tonic_prost::ProstCodec;

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

#[derive(Clone)]
struct Greeter(&'static str);

impl tonic::server::UnaryService<HelloRequest> for Greeter {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let message = format!("hello {} from {}", req.into_inner().name, self.0);
        std::future::ready(Ok(tonic::Response::new(HelloReply { message })))
    }
}

/// A gRPC server without generated code: every request is `SayHello`.
async fn greeter(name: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let mut grpc =
                            tonic::server::Grpc::new(
                                ProstCodec::<HelloReply, HelloRequest>::default(),
                            );
                        Ok::<_, Infallible>(grpc.unary(Greeter(name), req).await)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_tonic_client_calls_through_the_mesh() {
    let (a, b) = (greeter("a").await, greeter("b").await);
    let host = "greeter.default.svc.cluster.local";
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: greeter}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{grpc: {}}}\n  - address: 127.0.0.1\n    ports: {{grpc: {}}}\n",
        a.port(),
        b.port()
    );
    let mut cfg = IstioConfig::default();
    cfg.add_text("greeter.yaml", &yaml).unwrap();
    let cp = ControlPlane::new(translate(&cfg).unwrap());
    let xds = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let bootstrap = Bootstrap::from_json(
        &format!(r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~t.default~default.svc.cluster.local"}}}}"#),
        "test",
    )
    .unwrap();
    let target = format!("xds:///{host}:50051");
    let client = XdsClientBuilder::new(bootstrap)
        .target(&target)
        .start()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .unwrap()
        .unwrap();
    let svc = MeshService::new(
        client.snapshots(),
        MeshConfig::default().target(format!("{host}:50051")),
    );

    let mut grpc =
        tonic::client::Grpc::with_origin(svc, format!("http://{host}:50051").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..20 {
        grpc.ready().await.unwrap();
        let reply = grpc
            .unary(
                tonic::Request::new(HelloRequest {
                    name: format!("n{i}"),
                }),
                path.clone(),
                ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        assert!(
            reply.message.starts_with(&format!("hello n{i} from ")),
            "{}",
            reply.message
        );
        *seen
            .entry(reply.message.rsplit(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    // Round robin over both endpoints.
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        [10, 10],
        "{seen:?}"
    );
}
