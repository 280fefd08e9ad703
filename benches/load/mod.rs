//! What the load harnesses share: CPU time from /proc, a closed-loop driver with latency
//! percentiles, and small helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Process CPU time (user + system) from /proc/self/stat.
pub fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
pub fn cpu_time_of(pid: &str) -> Duration {
    let (user, system) = cpu_times_of(pid);
    user + system
}

/// User CPU time of this process: what the stack's own code costs, without the kernel's
/// share (sockets, wakeups), which varies with how requests happen to batch.
pub fn user_time() -> Duration {
    cpu_times_of("self").0
}

/// User and system CPU time of a process, from /proc/PID/stat.
pub fn cpu_times_of(pid: &str) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|u| u.parse().ok()).unwrap_or(0) };
    // USER_HZ is 100 on Linux.
    (
        Duration::from_millis(ticks(11) * 10),
        Duration::from_millis(ticks(12) * 10),
    )
}

pub struct Run {
    pub rps: f64,
    pub cpu_us: f64,
    /// This process's user CPU alone, per request.
    pub user_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// CPU of the Envoy processes in the path, per request.
    pub envoy_cpu_us: f64,
}

/// Resident memory of a process in MiB, from /proc/PID/status.
pub fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn drive<F, Fut>(requests: usize, concurrency: usize, envoys: &[u32], send: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let envoy_cpu = || {
        envoys
            .iter()
            .map(|p| cpu_time_of(&p.to_string()))
            .sum::<Duration>()
    };
    let envoy0 = envoy_cpu();
    let cpu0 = cpu_time();
    let user0 = user_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (send, next) = (send.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(requests / concurrency + 1);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let s = Instant::now();
                assert!(send().await, "request failed");
                lat.push(s.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let user = user_time() - user0;
    let envoy = envoy_cpu() - envoy0;
    lat.sort_unstable();
    Run {
        rps: requests as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / requests as f64,
        user_us: user.as_secs_f64() * 1e6 / requests as f64,
        p50_us: lat[lat.len() / 2],
        p99_us: lat[lat.len() * 99 / 100],
        envoy_cpu_us: envoy.as_secs_f64() * 1e6 / requests as f64,
    }
}

/// The median run by throughput (taken out of `runs`).
pub fn median(runs: &mut Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.remove(runs.len() / 2)
}

/// A request function for the load driver: GET `uri` with a pooled bare hyper client; true when
/// the answer was a success and its body arrived.
pub fn bare_get(
    uri: http::Uri,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ 'static {
    use http_body_util::BodyExt;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    move || {
        let (c, uri) = (client.clone(), uri.clone());
        Box::pin(async move {
            let req = http::Request::get(uri)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            match c.request(req).await {
                Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        })
    }
}
