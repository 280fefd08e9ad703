//! The attempts stage: breaker permits, pick, send, classify, outlier detection, budget and
//! backoff, until a response to return, into an [`AttemptOutcome`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::Response;
use mesh_core::route::{AttemptFailure, RetryPolicy};
use mesh_core::{BreakerResource, LbConfig, Outcome};
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tracing::Instrument;

use super::clusters::ClusterEntry;
use super::upstream::Head;
use crate::body::{DISCARD_LIMIT, MeshBody, RequestBody, discard};
use crate::connector::MeshConnector;
use crate::observe::{AttemptEnd, AttemptStart, RequestObserver};
use crate::pool::{Held, SendError};
use crate::protocol::{classify, local_reply};
use crate::reply::LocalReason;

/// Everything the attempts of one request work with.
pub(crate) struct Attempts<'r, C> {
    pub head: &'r Head,
    pub body: &'r RequestBody,
    pub cluster: &'r ClusterEntry<C>,
    pub retry: Option<&'r RetryPolicy>,
    /// The route timeout, from the first attempt on: attempts, backoffs and drains end at it
    /// (kept here rather than as a timer around the attempts, which would move their whole
    /// future once more).
    pub timeout: Option<Duration>,
    /// The request's hash, for hash-based balancers.
    pub hash: Option<u64>,
    pub grpc: bool,
    pub rng: &'r mut SmallRng,
    pub observer: &'r mut Option<Box<dyn RequestObserver>>,
    /// How far the attempts got, for `MeshInfo`.
    pub progress: &'r mut Progress,
}

/// How far the attempts got.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    /// Attempts sent (or refused at the last step).
    pub attempts: u32,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
}

/// The response the attempts settled on.
pub(crate) struct AttemptOutcome {
    pub response: Response<MeshBody>,
    /// Why the stack answered itself, if it did.
    pub reason: Option<LocalReason>,
    /// The retries allowed ran out on a retriable failure (Envoy's `URX`).
    pub retries_exhausted: bool,
}

impl AttemptOutcome {
    fn local(reason: LocalReason, grpc: bool) -> Self {
        Self {
            response: local_reply(reason, None, grpc),
            reason: Some(reason),
            retries_exhausted: false,
        }
    }
}

/// What one attempt came to.
struct Tried {
    failure: Option<AttemptFailure>,
    outcome: Outcome,
    /// The response, or why there is none and what went wrong.
    response: Result<Response<MeshBody>, (LocalReason, Option<String>)>,
}

impl<C: MeshConnector> Attempts<'_, C> {
    /// Runs attempts until one succeeds, fails without a retry left, or is refused.
    pub async fn run(self) -> AttemptOutcome {
        let Self {
            head,
            body,
            cluster: state,
            retry,
            timeout,
            hash,
            grpc,
            rng,
            observer,
            progress,
        } = self;
        let max_attempts = retry.map_or(1, |r| r.num_retries().saturating_add(1));
        // One clock read per attempt serves the budget, outlier detection, peak EWMA and
        // the deadlines.
        let mut sent = Instant::now();
        let deadline = timeout.map(|t| later(sent, t));
        state.budget.deposit(sent.into_std());
        // The last few endpoints tried (no allocation per request; usize::MAX is no endpoint).
        let mut tried = [usize::MAX; 4];
        let mut attempt = 0u32;
        // Taken when a retry is decided, before the budget is spent on it.
        let mut retry_permit = None;
        loop {
            attempt += 1;
            // Owned, and handed to the response body: the request counts against
            // `max_requests` (and a retry against `max_retries`) until its response has been
            // read to the end or dropped, as Envoy counts active streams.
            let request_permit = match state.breaker.try_acquire(BreakerResource::Requests) {
                Ok(p) => p,
                Err(o) => return AttemptOutcome::local(LocalReason::Overflow(o.resource), grpc),
            };
            let held = Held::new(request_permit, retry_permit.take());
            let Some(attempt_body) = body.attempt() else {
                return AttemptOutcome::local(LocalReason::RequestBody, grpc);
            };
            let mut pick = state.pick(hash, &tried, rng);
            if pick.is_none() {
                // Everything may be ejected with no traffic left to trigger a sweep.
                state.maybe_sweep(Instant::now().into_std());
                pick = state.pick(hash, &tried, rng);
            }
            let Some(i) = pick else {
                return AttemptOutcome::local(LocalReason::NoHealthyUpstream, grpc);
            };
            tried[(attempt as usize - 1) % tried.len()] = i;
            let endpoint = &state.endpoints.endpoints()[i];
            let (addr, labels) = (endpoint.address, &endpoint.labels);
            progress.attempts = attempt;
            progress.endpoint = Some(addr);
            let h2 = head.wants_h2();
            let mut req = head.build(attempt_body, None);
            if let Some(o) = observer.as_mut() {
                o.on_attempt(&mut AttemptStart {
                    attempt,
                    cluster: state.cluster.name(),
                    endpoint: addr,
                    labels,
                    headers: req.headers_mut(),
                });
            }
            if attempt > 1 {
                sent = Instant::now();
            }
            // In-flight counts feed only the load-aware balancers; the others skip the shared
            // counter updates.
            let active = matches!(
                state.cluster.lb(),
                LbConfig::LeastRequest { .. } | LbConfig::PeakEwma { .. }
            )
            .then(|| state.load(i).start());
            let limit = attempt_limit(retry, sent, deadline);
            // Awaited where it was made (pinned, raced against its deadline in place): every
            // wrapper or call level around it would move it once more.
            let span = tracing::debug_span!("mesh.attempt", attempt, endpoint = %addr);
            let sending = state.pools[i].send(req, h2, held).instrument(span);
            tokio::pin!(sending);
            let result = match limit {
                None => Ok(sending.await),
                Some((at, reason)) => {
                    let expiry = tokio::time::sleep_until(at);
                    tokio::pin!(expiry);
                    tokio::select! {
                        biased;
                        r = &mut sending => Ok(r),
                        () = &mut expiry => Err((reason, None)),
                    }
                }
            };
            drop(active);
            let t = Self::settle(state, i, result, sent);
            match t.response {
                // The pool refused the request: nothing was sent, so there is nothing to
                // record or retry.
                Err((r @ LocalReason::Overflow(_), _)) => return AttemptOutcome::local(r, grpc),
                // The request's time is up: nothing more is tried, and the endpoint is not
                // blamed for the route's deadline.
                Err((LocalReason::RouteTimeout, _)) => {
                    return AttemptOutcome::local(LocalReason::RouteTimeout, grpc);
                }
                Err(_) => {
                    // The caller's body failed, not the upstream: nothing to blame or retry.
                    if let Some(e) = body.error() {
                        return AttemptOutcome {
                            response: local_reply(LocalReason::RequestBody, Some(&e), grpc),
                            reason: Some(LocalReason::RequestBody),
                            retries_exhausted: false,
                        };
                    }
                }
                Ok(_) => {}
            }
            state.record(i, addr, t.outcome, sent.into_std());
            if let Some(o) = observer.as_mut() {
                o.on_attempt_end(&AttemptEnd {
                    attempt,
                    cluster: state.cluster.name(),
                    endpoint: addr,
                    labels,
                    status: t.response.as_ref().ok().map(|r| r.status()),
                    failure: t.failure,
                    reason: t.response.as_ref().err().map(|(r, _)| *r),
                    sent,
                    peer_identity: state.pools[i].peer_identity(),
                });
            }
            let (response, reason) = match t.response {
                Ok(r) => (r, None),
                Err((r, detail)) => (local_reply(r, detail.as_deref(), grpc), Some(r)),
            };
            let Some(failure) = t.failure else {
                return AttemptOutcome {
                    response,
                    reason,
                    retries_exhausted: false,
                };
            };
            let retriable = retry.is_some_and(|r| r.is_retriable(failure));
            if !(attempt < max_attempts && retriable && body.is_replayable()) {
                return AttemptOutcome {
                    response,
                    reason,
                    retries_exhausted: retriable && max_attempts > 1 && attempt >= max_attempts,
                };
            }
            // `max_retries` first: a retry the breaker refuses must not spend the budget.
            match state.breaker.try_acquire(BreakerResource::Retries) {
                Ok(p) => retry_permit = Some(p),
                Err(o) => return AttemptOutcome::local(LocalReason::Overflow(o.resource), grpc),
            }
            if !state.budget.try_withdraw(Instant::now().into_std()) {
                return AttemptOutcome {
                    response,
                    reason,
                    retries_exhausted: false,
                };
            }
            // Retrying is the rare path: its timers are boxed, so that they do not enlarge
            // every request's future.
            // The failed response is read (up to a cap, then dropped) so that its connection
            // can be reused.
            let drained = Box::pin(until(
                deadline,
                discard(response.into_body(), DISCARD_LIMIT),
            ))
            .await;
            let wait = retry.map_or(Duration::ZERO, |r| r.backoff(attempt, &mut *rng));
            let slept = Box::pin(until(
                deadline,
                tokio::time::sleep_until(later(Instant::now(), wait)),
            ))
            .await;
            if drained.is_none() || slept.is_none() {
                return AttemptOutcome::local(LocalReason::RouteTimeout, grpc);
            }
        }
    }

    /// What one attempt's send came to, classified; `sent` is when it went out.
    fn settle(
        state: &ClusterEntry<C>,
        i: usize,
        result: Result<Result<Response<MeshBody>, SendError>, (LocalReason, Option<String>)>,
        sent: Instant,
    ) -> Tried {
        let failed = |reason, failure| Tried {
            failure: Some(failure),
            outcome: Outcome::LocalFailure,
            response: Err(reason),
        };
        match result {
            Err(r) => failed(r, AttemptFailure::PerTryTimeout),
            Ok(Err(SendError::Overflow(o))) => Tried {
                failure: None,
                outcome: Outcome::Success,
                response: Err((LocalReason::Overflow(o.resource), None)),
            },
            Ok(Err(SendError::Connect(e))) => {
                tracing::debug!(error = %e, "upstream connect failed");
                failed(
                    (LocalReason::ConnectFailure, Some(e.to_string())),
                    AttemptFailure::ConnectFailure,
                )
            }
            Ok(Err(SendError::Request(e, io))) => {
                tracing::debug!(error = %e, "upstream request failed");
                let mut detail = with_sources(&e);
                if let Some(io) = io.filter(|io| !detail.contains(io.as_str())) {
                    detail.push_str("; the connection failed: ");
                    detail.push_str(&io);
                }
                failed((LocalReason::Reset, Some(detail)), AttemptFailure::Reset)
            }
            Ok(Ok(resp)) => {
                if let LbConfig::PeakEwma { decay, .. } = state.cluster.lb() {
                    let now = Instant::now();
                    state.load(i).observe(now - sent, now.into_std(), *decay);
                }
                let (failure, outcome) = classify(resp.status(), resp.headers());
                Tried {
                    failure,
                    outcome,
                    response: Ok(resp),
                }
            }
        }
    }
}

/// When an attempt sent at `sent` must end, and why: its per-try timeout or the route's
/// deadline, whichever is first.
fn attempt_limit(
    retry: Option<&RetryPolicy>,
    sent: Instant,
    deadline: Option<Instant>,
) -> Option<(Instant, LocalReason)> {
    let per_try = retry
        .and_then(|r| r.per_try_timeout())
        .map(|t| later(sent, t));
    match (per_try, deadline) {
        (Some(p), Some(d)) if d <= p => Some((d, LocalReason::RouteTimeout)),
        (Some(p), _) => Some((p, LocalReason::PerTryTimeout)),
        (None, Some(d)) => Some((d, LocalReason::RouteTimeout)),
        (None, None) => None,
    }
}

/// `d` after `at`, capped (see `mesh_core::time`).
fn later(at: Instant, d: Duration) -> Instant {
    mesh_core::time::after(at.into_std(), d).into()
}

/// `f`'s output, or `None` if `deadline` comes first.
async fn until<F: Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

/// An error with its causes: hyper says only "connection error", the cause (a reset, or a TLS
/// alert such as a server refusing the client certificate) is below it.
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
