//! The pool over in-memory connections (`tokio::io::duplex`, a hyper server on the far end)
//! and the paused clock: which connection a request gets, who waits, who overflows, and when
//! idle connections close.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{
    BreakerResource, CircuitBreaker, CircuitBreakerSpec, Cluster, ClusterSpec, Thresholds,
};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::{ClusterConns, EndpointPool, SendError};
use crate::body::{MeshBody, empty};
use crate::connector::ConnectTarget;

/// Connections to an in-memory HTTP/1.1 + HTTP/2 server. Each answers with its number in
/// `x-conn`; `/hold` waits for a permit from `release` before answering.
#[derive(Clone)]
struct Duplex(Arc<Far>);

struct Far {
    opened: AtomicUsize,
    closed: AtomicUsize,
    /// Requests the server has received.
    received: AtomicUsize,
    /// Lets `/hold` requests through, one per permit.
    release: Semaphore,
    /// Connects wait for a permit here when `gated`.
    connects: Semaphore,
    gated: bool,
}

impl Duplex {
    fn new(gated: bool) -> Self {
        Self(Arc::new(Far {
            opened: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            release: Semaphore::new(0),
            connects: Semaphore::new(0),
            gated,
        }))
    }

    fn opened(&self) -> usize {
        self.0.opened.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.0.closed.load(Ordering::SeqCst)
    }

    fn received(&self) -> usize {
        self.0.received.load(Ordering::SeqCst)
    }
}

impl tower::Service<ConnectTarget> for Duplex {
    type Response = TokioIo<tokio::io::DuplexStream>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ConnectTarget) -> Self::Future {
        let far = self.0.clone();
        Box::pin(async move {
            if far.gated {
                far.connects.acquire().await.expect("open").forget();
            }
            let id = far.opened.fetch_add(1, Ordering::SeqCst) + 1;
            let (near, server) = tokio::io::duplex(64 * 1024);
            let serving = far.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let far = serving.clone();
                    async move {
                        far.received.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/hold" {
                            far.release.acquire().await.expect("open").forget();
                        }
                        let resp = Response::builder()
                            .header("x-conn", id)
                            .body(Full::new(Bytes::from_static(b"done")))
                            .expect("valid response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(server), svc)
                    .await;
                far.closed.fetch_add(1, Ordering::SeqCst);
            });
            Ok(TokioIo::new(near))
        })
    }
}

fn pool(conn: &Duplex, spec: CircuitBreakerSpec, idle: Duration) -> Arc<EndpointPool<Duplex>> {
    let cluster = Cluster::new(&ClusterSpec {
        name: "outbound|80||svc".into(),
        // Longer than any test runs on the paused clock: a gated connect never times out.
        connect_timeout: Some(Duration::from_secs(86_400)),
        ..Default::default()
    })
    .expect("valid cluster");
    let conns = Arc::new(ClusterConns {
        connector: conn.clone(),
        breaker: CircuitBreaker::new(Thresholds::new(&spec)),
        freed: Arc::new(Notify::new()),
        idle_timeout: idle,
        cluster: RwLock::new(Arc::new(cluster)),
    });
    EndpointPool::new(conns, "127.0.0.1:80".parse().expect("address"))
}

fn request(path: &str, h2: bool) -> Request<MeshBody> {
    if h2 {
        Request::get(format!("http://svc{path}"))
            .version(http::Version::HTTP_2)
            .body(empty())
    } else {
        Request::get(path).header("host", "svc").body(empty())
    }
    .expect("valid request")
}

/// Sends and reads the whole response; the connection number that served it.
async fn send(pool: &Arc<EndpointPool<Duplex>>, path: &str, h2: bool) -> Result<usize, SendError> {
    let resp = pool
        .send(request(path, h2), h2, super::Held::default())
        .await?;
    let id = resp.headers()["x-conn"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"done");
    Ok(id)
}

/// Lets every task that can run do so (the paused clock moves only when all are idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn overflowed(r: Result<usize, SendError>) -> BreakerResource {
    match r {
        Err(SendError::Overflow(o)) => o.resource,
        other => panic!(
            "expected an overflow, got {:?}",
            other.map_err(|e| e.to_string())
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn http1_reuses_the_connection_returned_last() {
    let conn = Duplex::new(false);
    let pool = pool(
        &conn,
        CircuitBreakerSpec::default(),
        Duration::from_secs(90),
    );
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..3 {
        let (pool, done_tx) = (pool.clone(), done_tx.clone());
        tokio::spawn(async move { done_tx.send(send(&pool, "/hold", false).await.ok()) });
    }
    settle().await;
    assert_eq!(
        conn.opened(),
        3,
        "three held requests need three connections"
    );
    // Released one at a time, so the connections come back in a known order.
    let mut returned = Vec::new();
    for _ in 0..3 {
        conn.0.release.add_permits(1);
        returned.push(done.recv().await.flatten().expect("served"));
    }
    settle().await;
    let last = returned[2];
    assert_eq!(send(&pool, "/", false).await.ok(), Some(last));
    assert_eq!(send(&pool, "/", false).await.ok(), Some(last));
    assert_eq!(
        conn.opened(),
        3,
        "no new connection while idle ones are open"
    );
}

#[tokio::test(start_paused = true)]
async fn http1_waiters_take_a_pending_place_and_overflow_past_the_limit() {
    let conn = Duplex::new(false);
    let limits = CircuitBreakerSpec {
        max_connections: Some(1),
        max_pending_requests: Some(1),
        ..Default::default()
    };
    let pool = pool(&conn, limits, Duration::from_secs(90));
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { send(&pool, "/hold", false).await.ok() }
    });
    settle().await;
    assert_eq!(conn.received(), 1);
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { send(&pool, "/", false).await.ok() }
    });
    settle().await;
    assert_eq!(
        conn.received(),
        1,
        "the second request waits for the only connection"
    );
    assert_eq!(
        overflowed(send(&pool, "/", false).await),
        BreakerResource::PendingRequests
    );
    conn.0.release.add_permits(1);
    assert_eq!(first.await.expect("task"), Some(1));
    assert_eq!(
        waiter.await.expect("task"),
        Some(1),
        "served by the returned connection"
    );
    assert_eq!(conn.opened(), 1);
    // The pending place was given back: the next waiter is accepted again.
    assert_eq!(send(&pool, "/", false).await.ok(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn http2_requests_waiting_for_a_connect_take_a_pending_place() {
    let conn = Duplex::new(true);
    let limits = CircuitBreakerSpec {
        max_pending_requests: Some(1),
        ..Default::default()
    };
    let pool = pool(&conn, limits, Duration::from_secs(90));
    let spawn = |pool: &Arc<EndpointPool<Duplex>>| {
        let pool = pool.clone();
        tokio::spawn(async move { send(&pool, "/", true).await.ok() })
    };
    let connecting = spawn(&pool);
    settle().await;
    let waiting = spawn(&pool);
    settle().await;
    assert_eq!(
        overflowed(send(&pool, "/", true).await),
        BreakerResource::PendingRequests
    );
    conn.0.connects.add_permits(1);
    assert_eq!(connecting.await.expect("task"), Some(1));
    assert_eq!(
        waiting.await.expect("task"),
        Some(1),
        "multiplexed on the one connection"
    );
    assert_eq!(conn.opened(), 1);
    assert_eq!(send(&pool, "/", true).await.ok(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_the_idle_timeout() {
    for h2 in [false, true] {
        let conn = Duplex::new(false);
        let pool = pool(
            &conn,
            CircuitBreakerSpec::default(),
            Duration::from_secs(10),
        );
        assert_eq!(send(&pool, "/", h2).await.ok(), Some(1));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            send(&pool, "/", h2).await.ok(),
            Some(1),
            "h2={h2}: reused within the timeout"
        );
        // The reaper looks every 10 s: at 10 s the connection has been idle 4 s, at 20 s 14 s.
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert_eq!(
            conn.closed(),
            0,
            "h2={h2}: idle only 13 s at the reaper's last look"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            conn.closed(),
            1,
            "h2={h2}: closed once idle past the timeout"
        );
        assert_eq!(
            send(&pool, "/", h2).await.ok(),
            Some(2),
            "h2={h2}: a new connection"
        );
    }
}
