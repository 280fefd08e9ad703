//! A tonic client over the mesh stack: `tonic::client::Grpc` takes `MeshService` as its
//! transport (it is a `GrpcService`), and calls reach a gRPC server picked from EDS.

use std::convert::Infallible;
use std::future::Future;
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

/// A mesh stack in front of gRPC servers at `addrs`, as `greeter.default.svc.cluster.local`.
/// Returns the stack and what must stay alive for it.
async fn mesh_to(addrs: &[std::net::SocketAddr]) -> (MeshService, mesh_xds_client::XdsClient) {
    let host = "greeter.default.svc.cluster.local";
    let endpoints: String = addrs
        .iter()
        .map(|a| {
            format!(
                "  - address: 127.0.0.1\n    ports: {{grpc: {}}}\n",
                a.port()
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: greeter}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]\n  endpoints:\n{endpoints}"
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
    let client = XdsClientBuilder::new(bootstrap)
        .target(format!("xds:///{host}:50051"))
        .start()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .unwrap()
        .unwrap();
    let svc = MeshService::with_certificates(
        client.snapshots(),
        client.certificates(),
        MeshConfig::default().target(format!("{host}:50051")),
    );
    (svc, client)
}

#[tokio::test]
async fn a_tonic_client_calls_through_the_mesh() {
    let (a, b) = (greeter("a").await, greeter("b").await);
    let host = "greeter.default.svc.cluster.local";
    let (svc, _client) = mesh_to(&[a, b]).await;
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

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(uint32, tag = "1")]
    n: u32,
}

/// Bidi: a pong for each ping, as it comes. Client streaming: one reply with the sum.
async fn streaming_server() -> std::net::SocketAddr {
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;

    #[derive(Clone)]
    struct Echo;
    impl tonic::server::StreamingService<Ping> for Echo {
        type Response = Ping;
        type ResponseStream = ReceiverStream<Result<Ping, tonic::Status>>;
        type Future =
            std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

        fn call(&mut self, req: tonic::Request<tonic::Streaming<Ping>>) -> Self::Future {
            let mut inbound = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                while let Some(Ok(p)) = inbound.next().await {
                    if tx.send(Ok(Ping { n: p.n + 1000 })).await.is_err() {
                        return;
                    }
                }
            });
            std::future::ready(Ok(tonic::Response::new(ReceiverStream::new(rx))))
        }
    }
    #[derive(Clone)]
    struct Sum;
    impl tonic::server::ClientStreamingService<Ping> for Sum {
        type Response = Ping;
        type Future = std::pin::Pin<
            Box<dyn Future<Output = Result<tonic::Response<Ping>, tonic::Status>> + Send>,
        >;

        fn call(&mut self, req: tonic::Request<tonic::Streaming<Ping>>) -> Self::Future {
            Box::pin(async move {
                let mut inbound = req.into_inner();
                let mut n = 0;
                while let Some(p) = inbound.next().await {
                    n += p?.n;
                }
                Ok(tonic::Response::new(Ping { n }))
            })
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut grpc =
                            tonic::server::Grpc::new(ProstCodec::<Ping, Ping>::default());
                        let resp = if req.uri().path().ends_with("/Sum") {
                            grpc.client_streaming(Sum, req).await
                        } else {
                            grpc.streaming(Echo, req).await
                        };
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Each ping waits for the previous pong: a stack that read the request to its end before
/// sending it would wait forever.
#[tokio::test]
async fn bidi_streams_ping_pong_through_the_mesh() {
    use tokio_stream::wrappers::ReceiverStream;
    let (svc, _client) = mesh_to(&[streaming_server().await]).await;
    let mut grpc = tonic::client::Grpc::with_origin(
        svc,
        "http://greeter.default.svc.cluster.local:50051"
            .parse()
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ping { n: 0 }).await.unwrap();
    let call = grpc.streaming(
        tonic::Request::new(ReceiverStream::new(rx)),
        http::uri::PathAndQuery::from_static("/test.Echo/Echo"),
        ProstCodec::<Ping, Ping>::default(),
    );
    let mut pongs = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call starts before the request stream ends")
        .unwrap()
        .into_inner();
    for n in 0..100u32 {
        if n > 0 {
            tx.send(Ping { n }).await.unwrap();
        }
        let pong = tokio::time::timeout(Duration::from_secs(10), pongs.message())
            .await
            .expect("a pong for each ping")
            .unwrap()
            .unwrap();
        assert_eq!(pong.n, n + 1000);
    }
    drop(tx);
    assert!(pongs.message().await.unwrap().is_none());
}

#[tokio::test]
async fn client_streams_reach_the_server_whole() {
    let (svc, _client) = mesh_to(&[streaming_server().await]).await;
    let mut grpc = tonic::client::Grpc::with_origin(
        svc,
        "http://greeter.default.svc.cluster.local:50051"
            .parse()
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    // Larger than the copy the stack keeps for retries (64 KiB): streamed, nothing lost.
    let pings: Vec<Ping> = (1..=20_000).map(|n| Ping { n }).collect();
    let sum = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(pings)),
            http::uri::PathAndQuery::from_static("/test.Echo/Sum"),
            ProstCodec::<Ping, Ping>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sum.n, (1..=20_000u32).sum::<u32>());
}
