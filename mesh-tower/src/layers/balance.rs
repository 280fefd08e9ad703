//! Load balancing as a standalone service: mesh's pickers (smooth weighted round robin,
//! random, least request, peak EWMA, ring hash, Maglev) over a fixed set of endpoint
//! services, configured in code rather than by EDS.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use mesh_core::route::{HashPolicy, request_hash};
use mesh_core::{
    ClusterLoadAssignmentSpec, ClusterPicker, ConfigError, EndpointLoad, EndpointSet, EndpointSpec,
    LbConfig, LocalityEndpointsSpec, PickerOptions, RouteRequest,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower::{Service, ServiceExt};

use crate::body::BoxError;

/// Sends each request to one endpoint's service, picked by an [`LbConfig`]; endpoints carry
/// weights (`EndpointSpec::weight`), and hash-based policies hash the request with
/// [`HashPolicy`]s as a route's `hash_policy` does. Endpoint services must be cloneable (a
/// hyper client bound to one address, say); each call uses a clone of the picked one.
pub struct LoadBalancer<S> {
    shared: Arc<Balancing<S>>,
}

impl<S> Clone for LoadBalancer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Balancing<S> {
    lb: LbConfig,
    picker: ClusterPicker,
    /// In the endpoint set's order, which the picker's indexes follow.
    services: Vec<(SocketAddr, S)>,
    loads: Arc<[Arc<EndpointLoad>]>,
    hash_policies: Vec<HashPolicy>,
}

/// The error of a [`LoadBalancer`] call: no endpoint could be picked, or the endpoint's
/// service failed.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    /// Every endpoint is unhealthy (or there are none).
    #[error("no healthy endpoint")]
    NoEndpoint,
    /// The picked endpoint's service failed.
    #[error("endpoint {endpoint}: {source}")]
    Endpoint {
        /// The endpoint's address.
        endpoint: SocketAddr,
        /// Its error.
        source: BoxError,
    },
}

impl<S> LoadBalancer<S> {
    /// A balancer over `endpoints` (one locality, priority 0); invalid endpoints (a zero weight,
    /// a duplicate address) are reported as EDS errors are, under the name `balancer`.
    pub fn new(
        lb: LbConfig,
        endpoints: Vec<(EndpointSpec, S)>,
        hash_policies: Vec<HashPolicy>,
    ) -> Result<Self, ConfigError> {
        let specs = endpoints.iter().map(|(e, _)| e.clone()).collect();
        let set = EndpointSet::new(&ClusterLoadAssignmentSpec {
            cluster_name: "balancer".into(),
            localities: vec![LocalityEndpointsSpec {
                locality: Default::default(),
                weight: Some(1),
                priority: 0,
                endpoints: specs,
            }],
            ..Default::default()
        })?;
        // EndpointSet refused duplicate addresses, so every endpoint finds its service.
        let mut by_address: std::collections::HashMap<SocketAddr, S> =
            endpoints.into_iter().map(|(e, s)| (e.address, s)).collect();
        let services = set
            .endpoints()
            .iter()
            .filter_map(|e| Some((e.address, by_address.remove(&e.address)?)))
            .collect();
        let loads: Arc<[Arc<EndpointLoad>]> = (0..set.len()).map(|_| EndpointLoad::new()).collect();
        let picker = ClusterPicker::new(
            &lb,
            &set,
            PickerOptions::default(),
            |_| true,
            Some(loads.clone()),
            rand::random(),
        );
        Ok(Self {
            shared: Arc::new(Balancing {
                lb,
                picker,
                services,
                loads,
                hash_policies,
            }),
        })
    }
}

impl<S, B, R> Service<Request<B>> for LoadBalancer<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BalanceError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, BalanceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        // Readiness is the picked endpoint's, awaited in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let b = &self.shared;
        let hash = if b.lb.is_hash_based() {
            let view = RouteRequest::new(req.method(), req.uri(), req.headers());
            request_hash(&b.hash_policies, &view, 0)
        } else {
            None
        };
        let Some(i) = b
            .picker
            .pick(hash, &mut SmallRng::from_rng(&mut rand::rng()))
        else {
            return Box::pin(std::future::ready(Err(BalanceError::NoEndpoint)));
        };
        let Some((endpoint, svc)) = b.services.get(i).cloned() else {
            return Box::pin(std::future::ready(Err(BalanceError::NoEndpoint)));
        };
        let load = b.loads[i].clone();
        let active = load.start();
        let lb = b.lb;
        Box::pin(async move {
            let sent = Instant::now();
            let result = svc.oneshot(req).await;
            drop(active);
            if let LbConfig::PeakEwma { decay, .. } = lb {
                load.observe(sent.elapsed(), Instant::now(), decay);
            }
            result.map_err(|e| BalanceError::Endpoint {
                endpoint,
                source: e.into(),
            })
        })
    }
}
