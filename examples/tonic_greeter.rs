//! A tonic client through the mesh: two Greeter servers run on 127.0.0.1, the local control
//! plane serves a ServiceEntry for `greeter.default.svc.cluster.local:50051`, and a
//! `tonic::client::Grpc` over `MeshService` calls it through `xds:///` — calls are balanced
//! over both servers. (A generated client takes the same service: `GreeterClient::new(mesh)`.)
//!
//! `cargo run --example tonic_greeter`

use std::convert::Infallible;

use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::xds::Bootstrap;
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
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

/// A Greeter server (hand-rolled instead of generated, to keep the example self-contained).
async fn greeter(name: &'static str) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
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
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = (greeter("server-a").await?, greeter("server-b").await?);
    let host = "greeter.default.svc.cluster.local";
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: greeter}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{grpc: {}}}\n  - address: 127.0.0.1\n    ports: {{grpc: {}}}\n",
        a.port(),
        b.port()
    );
    let mut cfg = IstioConfig::default();
    cfg.add_text("greeter.yaml", &yaml)?;
    let xds = ControlPlane::new(translate(&cfg)?)
        .spawn("127.0.0.1:0".parse()?)
        .await?;

    let bootstrap = Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~example.default~default.svc.cluster.local"}}}}"#
        ),
        "example",
    )?;
    // One line in a real workload: `mesh::Channel::from_env("xds:///greeter...:50051")?`.
    let channel = mesh::Channel::from_builder(
        mesh::Client::builder()
            .bootstrap(bootstrap)
            .target(format!("xds:///{host}:50051")),
    )?;

    let mut grpc =
        tonic::client::Grpc::with_origin(channel, format!("http://{host}:50051").parse()?);
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
    for i in 0..6 {
        grpc.ready().await?;
        let reply = grpc
            .unary(
                tonic::Request::new(HelloRequest {
                    name: format!("call-{i}"),
                }),
                path.clone(),
                ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await?;
        println!("{}", reply.into_inner().message);
    }
    Ok(())
}
