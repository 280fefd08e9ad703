//! The no-agent mode against a fake istiod: ADS and `IstioCertificateService` on one TLS port
//! (a tonic server signing CSRs with rcgen), the way a pod built with `IstiodBootstrap` meets
//! istiod's 15012.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use mesh_xds_client::certs::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_xds_client::testing::ca::{TestCa, Validity};
use mesh_xds_client::testing::{self, subset_key};
use mesh_xds_client::{Backoff, IstiodBootstrap, ResourceType, XdsClient, XdsClientBuilder};
use support::FakeAds;
use tonic::Status;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

const HOST: &str = "ui.default.svc.cluster.local";
const ISTIOD: &str = "istiod.istio-system.svc";
const ID: &str = "spiffe://cluster.local/ns/default/sa/ui";

/// One CreateCertificate call as the CA saw it.
#[derive(Debug, Clone)]
struct Call {
    authorization: Option<String>,
    cluster_id: Option<String>,
    ttl: i64,
    csr_sans: Vec<String>,
    /// The SPIFFE ID of the client certificate presented, if any.
    peer: Option<String>,
    refused: bool,
}

/// A CA that signs what it is sent for the identity in the CSR, valid from a second ago for
/// the requested lifetime; while `down`, it answers UNAVAILABLE.
#[derive(Clone)]
struct FakeCa {
    ca: Arc<TestCa>,
    calls: Arc<Mutex<Vec<Call>>>,
    down: Arc<AtomicBool>,
}

impl tonic::server::NamedService for FakeCa {
    const NAME: &'static str = "istio.v1.auth.IstioCertificateService";
}

impl tonic::server::UnaryService<IstioCertificateRequest> for FakeCa {
    type Response = IstioCertificateResponse;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<tonic::Response<IstioCertificateResponse>, Status>> + Send>,
    >;

    fn call(&mut self, req: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let md = |k: &str| {
                req.metadata()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let peer = req
                .peer_certs()
                .and_then(|c| c.first().cloned())
                .and_then(|c| mesh_core::LeafInfo::parse(&c).ok())
                .and_then(|l| l.sans.spiffe_id().map(String::from));
            let (authorization, cluster_id) = (md("authorization"), md("clusterid"));
            let body = req.into_inner();
            let csr = rcgen::CertificateSigningRequestParams::from_pem(&body.csr)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let csr_sans: Vec<String> = csr
                .params
                .subject_alt_names
                .iter()
                .map(|s| match s {
                    rcgen::SanType::URI(u) => u.as_str().to_string(),
                    other => format!("{other:?}"),
                })
                .collect();
            let refused = me.down.load(Ordering::SeqCst);
            me.calls.lock().unwrap().push(Call {
                authorization,
                cluster_id,
                ttl: body.validity_duration,
                csr_sans: csr_sans.clone(),
                peer,
                refused,
            });
            if refused {
                return Err(Status::unavailable("CA is down"));
            }
            let now = SystemTime::now();
            let ttl = Duration::from_secs(u64::try_from(body.validity_duration).unwrap());
            let leaf = me.ca.leaf_for_key(
                &csr.public_key,
                vec![rcgen::SanType::URI(csr_sans[0].clone().try_into().unwrap())],
                Validity {
                    not_before: now - Duration::from_secs(1),
                    not_after: now + ttl,
                },
            );
            let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.der));
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain: vec![leaf_pem, me.ca.root_pem()],
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for FakeCa {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                IstioCertificateResponse,
                IstioCertificateRequest,
            >::default());
            Ok(grpc.unary(me, req).await)
        })
    }
}

struct Istiod {
    addr: SocketAddr,
    ads: FakeAds,
    ca: FakeCa,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// ADS and the CA on one TLS port, the client certificate optional (as istiod's 15012).
async fn istiod(
    port: u16,
    ca: Arc<TestCa>,
    ads: FakeAds,
    fake: FakeCa,
    dir: tempfile::TempDir,
) -> Istiod {
    let serving = ca.leaf(
        vec![rcgen::SanType::DnsName(ISTIOD.try_into().unwrap())],
        Validity::for_ttl(Duration::from_secs(86_400)),
    );
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&serving.chain_pem, &serving.key_pem))
        .client_ca_root(Certificate::from_pem(ca.root_pem()))
        .client_auth_optional(true);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AggregatedDiscoveryServiceServer::new(ads.clone()))
        .add_service(fake.clone());
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    Istiod {
        addr,
        ads,
        ca: fake,
        dir,
        stop: Some(tx),
    }
}

async fn start(env: &[(&str, &str)]) -> (Istiod, XdsClient) {
    let ca = Arc::new(TestCa::new("istio-ca"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.path().join("istio-token"), "pod-token\n").unwrap();
    let ads = FakeAds::new();
    let (l, r, c) = (
        format!("{HOST}:80"),
        subset_key(80, "", HOST),
        subset_key(80, "v1", HOST),
    );
    ads.set(ResourceType::Listener, vec![testing::listener(&l, &r)]);
    ads.set(
        ResourceType::RouteConfiguration,
        vec![testing::route_config(&r, &[HOST], &[(&c, 1)])],
    );
    ads.set(ResourceType::Cluster, vec![testing::eds_cluster(&c)]);
    ads.set(
        ResourceType::ClusterLoadAssignment,
        vec![testing::endpoints(&c, &["127.0.0.1:1".parse().unwrap()])],
    );
    let fake = FakeCa {
        ca: ca.clone(),
        calls: Arc::default(),
        down: Arc::default(),
    };
    let server = istiod(0, ca, ads, fake, dir).await;
    let base = [
        ("POD_NAME", "ui-0"),
        ("POD_NAMESPACE", "default"),
        ("INSTANCE_IP", "127.0.0.1"),
        ("SERVICE_ACCOUNT", "ui"),
        ("ISTIOD_SAN", ISTIOD),
    ];
    let vars: Vec<(String, String)> = base
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bootstrap = IstiodBootstrap::default()
        .address(server.addr.to_string())
        .root_cert(server.dir.path().join("root-cert.pem"))
        .token_file(server.dir.path().join("istio-token"))
        .build_from(|k| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
    let fast = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    let client = XdsClientBuilder::new(bootstrap)
        .target(format!("xds:///{HOST}:80"))
        .backoff(fast)
        .ca_retry(fast)
        .start()
        .unwrap();
    (server, client)
}

async fn serial_other_than(client: &XdsClient, not: Option<&str>) -> String {
    let mut certs = client.certificates();
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        certs.wait_for(|c| {
            c.provider("default")
                .and_then(|p| p.identity.as_ref())
                .is_some_and(|i| Some(i.serial()) != not)
        }),
    )
    .await
    .expect("a certificate in time")
    .unwrap()
    .clone();
    c.provider("default")
        .unwrap()
        .identity
        .as_ref()
        .unwrap()
        .serial()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_agent_the_certificate_comes_from_istiods_ca_and_then_authenticates_xds() {
    let (mut server, client) = start(&[]).await;
    serial_other_than(&client, None).await;
    let certs = client.certificates().borrow().clone();
    let p = certs.provider("default").unwrap();
    let id = p.identity.as_ref().unwrap();
    assert_eq!(id.spiffe_id(), Some(ID));
    assert_eq!(
        id.chain().len(),
        1,
        "the leaf; the root is published as the roots"
    );
    assert_eq!(p.roots.as_ref().unwrap().certs().len(), 1);
    let calls = server.ca.calls.lock().unwrap().clone();
    let first = &calls[0];
    assert_eq!(first.authorization.as_deref(), Some("Bearer pod-token"));
    assert_eq!(first.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(first.ttl, 86_400);
    assert_eq!(first.csr_sans, [ID]);
    assert_eq!(
        first.peer, None,
        "the first request has no certificate to present"
    );
    assert_eq!(
        calls.len(),
        1,
        "a day-long certificate is not renewed at once"
    );
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .unwrap()
        .unwrap();

    // The stream ends (istiod restarting): the next one presents the workload certificate
    // (mTLS to 15012), on a new connection.
    server.ads.clear_seen();
    server.ads.end_streams();
    server
        .ads
        .wait_for("a stream with the workload certificate", |s| {
            s.peer.as_deref() == Some(ID)
        })
        .await;
    drop(server.stop.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_during_renewal_keeps_the_valid_certificate_until_the_ca_is_back() {
    // Five-second certificates (a second of backdating and a 4 s TTL): renewal at about 2.5 s.
    let (server, client) = start(&[("SECRET_TTL", "4s")]).await;
    let first = serial_other_than(&client, None).await;
    server.ca.down.store(true, Ordering::SeqCst);
    let mut certs = client.certificates();
    let during = tokio::time::timeout(
        Duration::from_secs(10),
        certs.wait_for(|c| {
            c.provider("default")
                .is_some_and(|p| p.last_error.is_some())
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let p = during.provider("default").unwrap();
    assert_eq!(
        p.identity.as_ref().unwrap().serial(),
        first,
        "the valid certificate stays"
    );
    assert!(
        p.last_error
            .as_deref()
            .unwrap()
            .ends_with("CreateCertificate: The service is currently unavailable: CA is down"),
        "{:?}",
        p.last_error
    );
    drop(during);
    server.ca.down.store(false, Ordering::SeqCst);
    let second = serial_other_than(&client, Some(&first)).await;
    assert_ne!(second, first);
    let calls = server.ca.calls.lock().unwrap().clone();
    assert!(calls.iter().any(|c| c.refused));
    let renewals: Vec<&Call> = calls[1..].iter().collect();
    assert!(
        renewals.iter().all(|c| c.peer.as_deref() == Some(ID)),
        "renewals present the still-valid certificate: {renewals:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client
            .certificates()
            .borrow()
            .provider("default")
            .unwrap()
            .last_error,
        None
    );
}
