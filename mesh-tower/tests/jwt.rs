//! RequestAuthentication end to end: the local control plane's `jwt_authn` filter in the
//! inbound listener, a mesh server on 127.0.0.1 verifying tokens signed in the test (inline
//! keys, and keys fetched from a JWKS server that rotates and fails), and AuthorizationPolicy
//! reading the request principal and claims. Plain HTTP/1.1 and gRPC-shaped callers.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_control_plane::ControlPlane;
use mesh_core::jwt::RequestAuth;
use mesh_tower::{MeshServer, ServingState};
use mesh_xds_client::testing::jwt::JwtIssuer;
use mesh_xds_client::{Bootstrap, XdsClient, XdsClientBuilder};
use serde_json::json;
use support::{HOST, resources};

const ISS: &str = "https://idp.example";

/// `ui` on `port`, plaintext (PERMISSIVE), accepting tokens of `ISS` with keys from `jwks`
/// (inline) or `jwks_uri`, audience `api`; `/admin*` needs a request principal of `ISS` in
/// group `admins`, and DENY for `sub` `mallory`.
fn yaml(port: u16, keys: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: ui}}}}\n---\n\
apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: idp, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: ui}}}}\n  jwtRules:\n  - issuer: {ISS}\n    audiences: [api]\n    {keys}\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: admins, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: ui}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{notPaths: ['/admin*']}}}}]\n  - from: [{{source: {{requestPrincipals: ['{ISS}/*']}}}}]\n    to: [{{operation: {{paths: ['/admin*']}}}}]\n    when: [{{key: 'request.auth.claims[groups]', values: [admins]}}]\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-mallory, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: ui}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{requestPrincipals: ['{ISS}/mallory']}}}}]\n"
    )
}

fn bootstrap(xds: SocketAddr) -> Bootstrap {
    Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}],
                "node": {{"id": "sidecar~127.0.0.1~ui.default~default.svc.cluster.local", "metadata": {{"NAMESPACE": "default"}}}},
                "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"}}"#
        ),
        "test",
    )
    .unwrap()
}

/// The application: who the token says is calling, and what reached it.
async fn app(
    req: Request<mesh_tower::server::InboundBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<RequestAuth>()
        .map_or("anonymous".to_string(), |a| a.principal.clone());
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "{who} authorization={} x-jwt-sub={}",
        h("authorization"),
        h("x-jwt-sub")
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

struct World {
    addr: SocketAddr,
    _cp: ControlPlane,
    _xds: XdsClient,
}

async fn world(keys: &str, tune: impl FnOnce(MeshServer) -> MeshServer) -> World {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cp = ControlPlane::new(resources(&yaml(addr.port(), keys)));
    let xds_addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let xds = XdsClientBuilder::new(bootstrap(xds_addr)).start().unwrap();
    let name = xds.subscribe_server(addr).unwrap();
    let server = tune(MeshServer::new(
        name,
        addr,
        xds.snapshots(),
        xds.certificates(),
    ));
    let mut serving = server.serving();
    tokio::time::timeout(
        Duration::from_secs(10),
        serving.wait_for(|s| *s == ServingState::Serving),
    )
    .await
    .expect("serving in time")
    .unwrap();
    tokio::spawn(server.serve(listener, tower::service_fn(app)));
    World {
        addr,
        _cp: cp,
        _xds: xds,
    }
}

/// One HTTP/1.1 request: the status, the body, and the `www-authenticate` and `grpc-status`
/// headers.
async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    grpc: bool,
) -> (StatusCode, String, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "ui");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (auth, grpc_status) = (h("www-authenticate"), h("grpc-status"));
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).trim().to_string(),
        auth,
        grpc_status,
    )
}

fn inline(idp: &JwtIssuer) -> String {
    format!("jwks: '{}'", JwtIssuer::jwks(&[idp]))
}

#[tokio::test]
async fn tokens_are_verified_and_feed_authorization() {
    let idp = JwtIssuer::new(ISS, "k1");
    let w = world(&inline(&idp), |s| s).await;
    let api = |extra: serde_json::Value| {
        let mut claims = json!({"aud": "api"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    // Valid: the app sees the principal and the copied claim, not the token (not forwarded).
    let t = idp.token("alice", api(json!({})));
    let (status, body, ..) = get(w.addr, "/orders", Some(&t), false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("{ISS}/alice authorization=- x-jwt-sub=alice"));

    // Missing: accepted without an identity where no policy asks for one.
    let (status, body, ..) = get(w.addr, "/orders", None, false).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "anonymous authorization=- x-jwt-sub=-")
    );
    // ... and refused (403) where a policy requires a request principal.
    let (status, body, ..) = get(w.addr, "/admin/users", None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "RBAC: access denied: no policy of envoy.filters.http.rbac allows it"
    );
    // The claim condition: only the admins group reaches /admin.
    let admin = idp.token("root", api(json!({"groups": ["admins"]})));
    let user = idp.token("bob", api(json!({"groups": ["users"]})));
    assert_eq!(
        get(w.addr, "/admin/users", Some(&admin), false).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(w.addr, "/admin/users", Some(&user), false).await.0,
        StatusCode::FORBIDDEN
    );
    // DENY on the request principal wins over ALLOW.
    let mallory = idp.token("mallory", api(json!({"groups": ["admins"]})));
    let (status, body, ..) = get(w.addr, "/admin/users", Some(&mallory), false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "RBAC: access denied: denied by policy \"default-no-mallory-0\" of envoy.filters.http.rbac.DENY"
    );

    // Invalid tokens are 401 with Envoy's reason, even where nothing requires a token.
    let forger = JwtIssuer::new(ISS, "k1");
    let cases = [
        (
            forger.token("alice", api(json!({}))),
            "Jwt verification fails",
        ),
        (
            idp.token("alice", api(json!({"exp": JwtIssuer::now() - 120}))),
            "Jwt is expired",
        ),
        (
            idp.token("alice", json!({"aud": "web"})),
            "Audiences in Jwt are not allowed",
        ),
        (
            idp.token("alice", api(json!({"iss": "https://elsewhere"}))),
            "Jwt issuer is not configured",
        ),
        (
            JwtIssuer::new(ISS, "k9").token("alice", api(json!({}))),
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            "garbage".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (token, reason) in &cases {
        let (status, body, challenge, _) = get(w.addr, "/orders", Some(token), false).await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, *reason));
        assert_eq!(challenge, "Bearer realm=\"mesh\", error=\"invalid_token\"");
    }
    // gRPC callers get UNAUTHENTICATED.
    let (status, _, _, grpc_status) = get(w.addr, "/svc/Method", Some(&cases[0].0), true).await;
    assert_eq!((status, grpc_status.as_str()), (StatusCode::OK, "16"));
}

/// A JWKS server whose document the test replaces, or fails with 500 when empty; it counts
/// the fetches.
async fn jwks_server(doc: Arc<Mutex<String>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (doc, count) = (doc.clone(), count.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(body.clone())));
                            if body.is_empty() {
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, fetches)
}

#[tokio::test]
async fn remote_keys_are_fetched_rotated_and_kept_through_outages() {
    let (k1, k2, k3) = (
        JwtIssuer::new(ISS, "k1"),
        JwtIssuer::new(ISS, "k2"),
        JwtIssuer::new(ISS, "k3"),
    );
    let doc = Arc::new(Mutex::new(JwtIssuer::jwks(&[&k1])));
    let (jwks, fetches) = jwks_server(doc.clone()).await;
    let keys = format!("jwksUri: http://{jwks}/.well-known/jwks.json");
    let w = world(&keys, |s| s.jwks_min_refetch(Duration::ZERO)).await;
    let token = |k: &JwtIssuer| k.token("alice", json!({"aud": "api"}));
    let ok = format!("{ISS}/alice authorization=- x-jwt-sub=alice");

    // The first token waits for the first fetch.
    let (status, body, ..) = get(w.addr, "/orders", Some(&token(&k1)), false).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ok.as_str()));
    let after_first = fetches.load(Ordering::SeqCst);
    assert!((1..=2).contains(&after_first), "{after_first} fetches");

    // The identity provider rotates to k2: a token naming k2 makes the server fetch again.
    *doc.lock().unwrap() = JwtIssuer::jwks(&[&k2]);
    let (status, body, ..) = get(w.addr, "/orders", Some(&token(&k2)), false).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ok.as_str()));
    assert!(fetches.load(Ordering::SeqCst) > after_first);

    // The provider fails: the last good set (k2) still verifies, and an unknown key is refused
    // with the reason (the set kept is k2's).
    *doc.lock().unwrap() = String::new();
    let (status, ..) = get(w.addr, "/orders", Some(&token(&k2)), false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, ..) = get(w.addr, "/orders", Some(&token(&k3)), false).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "Jwks doesn't have key to match kid or alg from Jwt"
        )
    );
    // k1 was rotated out.
    let (status, ..) = get(w.addr, "/orders", Some(&token(&k1)), false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forced_refetches_are_spaced_and_a_missing_key_set_is_named() {
    let k1 = JwtIssuer::new(ISS, "k1");
    // The identity provider is down from the start.
    let doc = Arc::new(Mutex::new(String::new()));
    let (jwks, fetches) = jwks_server(doc.clone()).await;
    let keys = format!("jwksUri: http://{jwks}/keys");
    let w = world(&keys, |s| s.jwks_min_refetch(Duration::from_secs(3600))).await;
    let t = k1.token("alice", json!({"aud": "api"}));
    for _ in 0..5 {
        let (status, body, ..) = get(w.addr, "/orders", Some(&t), false).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::UNAUTHORIZED, "Jwks remote fetch is failed")
        );
    }
    // Five refused requests, one fetch: the interval holds them back.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Without a token the request is not held up by the missing keys.
    let (status, ..) = get(w.addr, "/orders", None, false).await;
    assert_eq!(status, StatusCode::OK);
}
