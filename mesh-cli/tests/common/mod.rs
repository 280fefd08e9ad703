//! A mesh of two workloads for the CLI's tests: `echo` (a server on a free port, STRICT mTLS,
//! service account echo) and `client`, each with a bootstrap and a certificate from one test
//! CA, served by the local control plane.
#![allow(dead_code)]

use std::path::PathBuf;

use mesh_control_plane::ControlPlane;
use mesh_control_plane::watch::load;
use mesh_xds_client::testing::ca::TestCa;

/// The two workloads' bootstraps and the server's port.
pub struct EchoWorld {
    /// Where `echo` is to listen.
    pub port: u16,
    /// `echo`'s bootstrap file.
    pub server: PathBuf,
    /// `client`'s bootstrap file.
    pub client: PathBuf,
    pub cp: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// The world, with `extra` Istio YAML (policies) besides the service, its ISTIO_MUTUAL
/// DestinationRule and a STRICT PeerAuthentication.
pub async fn echo_world(extra: &str) -> EchoWorld {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo, namespace: default}}\nspec:\n  hosts: [echo.default.svc.cluster.local]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: echo, labels: {{app: echo}}}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: default}}\nspec:\n  host: echo.default.svc.cluster.local\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n---\n\
apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: default}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n{extra}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo.yaml"), yaml).unwrap();
    let cp = ControlPlane::new(load(dir.path()).unwrap());
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ca = TestCa::new("mesh-test-ca");
    let bootstrap_for = |name: &str, id: &str| {
        let certs = dir.path().join(name);
        std::fs::create_dir_all(&certs).unwrap();
        let leaf = ca.workload(id);
        for (f, body) in [
            ("cert-chain.pem", &leaf.chain_pem),
            ("key.pem", &leaf.key_pem),
            ("root-cert.pem", &ca.root_pem()),
        ] {
            std::fs::write(certs.join(f), body).unwrap();
        }
        let f = |n: &str| certs.join(n).display().to_string();
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"xds_servers": [{{"server_uri": "{addr}", "channel_creds": [{{"type": "insecure"}}]}}],
                "node": {{"id": "sidecar~127.0.0.1~{name}.default~default.svc.cluster.local", "metadata": {{"NAMESPACE": "default", "WORKLOAD_NAME": "{name}"}}}},
                "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
                "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}", "refresh_interval": "900s"}}}}}}}}"#,
                f("cert-chain.pem"),
                f("key.pem"),
                f("root-cert.pem")
            ),
        )
        .unwrap();
        path
    };
    let server = bootstrap_for("echo", "spiffe://cluster.local/ns/default/sa/echo");
    let client = bootstrap_for("client", "spiffe://cluster.local/ns/default/sa/client");
    EchoWorld {
        port,
        server,
        client,
        cp: addr,
        _dir: dir,
    }
}
