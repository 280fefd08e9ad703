//! The stack's settings.

use std::sync::Arc;
use std::time::Duration;

use crate::observe::Observer;

/// Stack settings, built with chained setters from [`MeshConfig::default`].
#[derive(Clone)]
pub struct MeshConfig {
    pub(crate) target: Option<String>,
    pub(crate) max_replay_bytes: usize,
    pub(crate) mirror_concurrency: usize,
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) retry_budget: Option<mesh_core::RetryBudgetConfig>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            target: None,
            max_replay_bytes: 64 * 1024,
            mirror_concurrency: 64,
            pool_idle_timeout: Duration::from_secs(90),
            observer: None,
            retry_budget: None,
        }
    }
}

impl MeshConfig {
    /// Routes every request on this listener (`host:port`, from an `xds:///host:port`
    /// target) instead of taking it from each request's authority.
    pub fn target(mut self, host_port: impl Into<String>) -> Self {
        self.target = Some(host_port.into());
        self
    }

    /// How much of a request body is copied as it streams upstream, so that a retry or a
    /// mirror can send it again (default 64 KiB); a longer body is sent once.
    pub fn max_replay_bytes(mut self, bytes: usize) -> Self {
        self.max_replay_bytes = bytes;
        self
    }

    /// Mirrored requests in flight at most (default 64); beyond it mirrors are skipped.
    pub fn mirror_concurrency(mut self, n: usize) -> Self {
        self.mirror_concurrency = n;
        self
    }

    /// Idle connections (HTTP/1.1 and HTTP/2) are closed after this long (default 90 s;
    /// checked every timeout, so a connection may stay up to twice this long).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Sees every request (metrics, access logs, trace propagation).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Replaces every cluster's retry budget (the default budget allows 20% of requests plus
    /// 10 retries a second: it stops a dead backend from being hammered, and also caps
    /// retries against a backend that fails half its requests).
    pub fn retry_budget(mut self, budget: mesh_core::RetryBudgetConfig) -> Self {
        self.retry_budget = Some(budget);
        self
    }
}
