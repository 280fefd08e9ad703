//! Features of the stack as standalone tower layers, for use around any HTTP client: a retry
//! layer governed by a retry budget, a circuit breaker, fault injection, request mirroring,
//! outlier detection and load balancing with mesh's pickers (timeouts come from
//! `tower::timeout`).
//!
//! `MeshService` applies all of these from xDS; these layers take their config directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::route::{AttemptFailure, FaultConfig, RetryPolicy};
use mesh_core::{BreakerResource, CircuitBreaker, RetryBudget, RouteRequest};
use tower::{Layer, Service};

use crate::body::MeshBody;
use crate::protocol::{classify, fault_abort_reply, is_grpc, local_reply};
use crate::reply::LocalReason;

mod balance;
mod mirror;
mod outlier;

pub use balance::{BalanceError, LoadBalancer};
pub use mirror::{MirrorLayer, MirrorService};
pub use outlier::{OutlierDetection, OutlierDetectionLayer, OutlierDetectionService};

/// Retries per a [`RetryPolicy`] (status-based), each retry paid from a [`RetryBudget`], with
/// the policy's jittered backoff. Requests must be cloneable (`Request<Bytes>`-like bodies).
#[derive(Clone)]
pub struct RetryBudgetLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
}

impl RetryBudgetLayer {
    /// A layer retrying under `policy`, limited by `budget` (share it between clients of one
    /// backend so that they are limited together).
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>) -> Self {
        Self {
            policy: Arc::new(policy),
            budget,
        }
    }
}

impl<S> Layer<S> for RetryBudgetLayer {
    type Service = tower::retry::Retry<BudgetPolicy, S>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::retry::Retry::new(
            BudgetPolicy {
                policy: self.policy.clone(),
                budget: self.budget.clone(),
                attempt: 0,
                deposited: false,
            },
            inner,
        )
    }
}

/// The tower retry policy behind [`RetryBudgetLayer`].
#[derive(Clone)]
pub struct BudgetPolicy {
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    attempt: u32,
    deposited: bool,
}

impl<B: Clone, Res, E> tower::retry::Policy<Request<B>, Response<Res>, E> for BudgetPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<Res>, E>,
    ) -> Option<Self::Future> {
        let now = tokio::time::Instant::now().into_std();
        if !self.deposited {
            self.budget.deposit(now);
            self.deposited = true;
        }
        let failure = match result {
            Ok(r) => classify(r.status(), r.headers()).0?,
            Err(_) => AttemptFailure::Reset,
        };
        self.attempt += 1;
        if self.attempt > self.policy.num_retries()
            || !self.policy.is_retriable(failure)
            || !self.budget.try_withdraw(now)
        {
            return None;
        }
        Some(tokio::time::sleep(
            self.policy.backoff(self.attempt, &mut rand::rng()),
        ))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

/// Fails fast beyond a breaker's limit: 503 and `x-mesh-overflow: max_requests`, or for gRPC
/// callers UNAVAILABLE, as the stack answers.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    /// A layer counting against `breaker` (share it to limit several clients together).
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service behind [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for CircuitBreakerService<S>
where
    S: Service<Request<B>, Response = Response<MeshBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<MeshBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<MeshBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.breaker.try_acquire(BreakerResource::Requests) {
            Err(o) => {
                let grpc = is_grpc(req.headers());
                let r = local_reply(LocalReason::Overflow(o.resource), None, grpc);
                Box::pin(std::future::ready(Ok(r)))
            }
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let r = fut.await;
                    drop(permit);
                    r
                })
            }
        }
    }
}

/// Injects delays and aborts per a [`FaultConfig`] (percentages and header control as A33);
/// gRPC callers get an HTTP abort as the gRPC code gRPC's spec maps it to.
#[derive(Clone)]
pub struct FaultLayer {
    fault: Arc<FaultConfig>,
}

impl FaultLayer {
    /// A layer injecting `fault`.
    pub fn new(fault: FaultConfig) -> Self {
        Self {
            fault: Arc::new(fault),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            fault: self.fault.clone(),
        }
    }
}

/// The service behind [`FaultLayer`].
#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    fault: Arc<FaultConfig>,
}

impl<S, B> Service<Request<B>> for FaultService<S>
where
    S: Service<Request<B>, Response = Response<MeshBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<MeshBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<MeshBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let decision = {
            let view = RouteRequest::new(req.method(), req.uri(), req.headers());
            self.fault.decide(&view, &mut rand::rng())
        };
        let grpc = is_grpc(req.headers());
        // The inner service was polled ready; keep that one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if let Some(d) = decision.delay {
                tokio::time::sleep(d).await;
            }
            match decision.abort {
                Some(abort) => Ok(fault_abort_reply(abort, grpc)),
                None => inner.call(req).await,
            }
        })
    }
}

#[cfg(test)]
mod tests;
