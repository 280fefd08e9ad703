//! Who is on each end of a request, as Istio's standard metrics name them: the local workload
//! from the node metadata, a peer from the endpoint metadata istiod sends (`istio.workload`)
//! or from its SPIFFE ID, and the destination service from the cluster's name.

use std::sync::Arc;

mod grpc_messages;
pub mod peer_metadata;
pub mod trace_context;

pub use grpc_messages::GrpcMessages;

/// A workload as Istio's metric labels describe it. Empty fields render as Istio's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `WORKLOAD_NAME` (the Deployment's name for a pod).
    pub name: Arc<str>,
    /// The namespace.
    pub namespace: Arc<str>,
    /// The cluster id (`CLUSTER_ID`, `Kubernetes` by default).
    pub cluster: Arc<str>,
    /// The `app` label.
    pub app: Arc<str>,
    /// The `version` label.
    pub version: Arc<str>,
    /// The canonical service (`service.istio.io/canonical-name`).
    pub canonical_service: Arc<str>,
    /// The canonical revision (`service.istio.io/canonical-revision`).
    pub canonical_revision: Arc<str>,
    /// The SPIFFE ID of its certificate, as Istio's labels write it
    /// (`spiffe://cluster.local/ns/default/sa/web`).
    pub principal: Arc<str>,
}

impl Workload {
    /// Reads a workload from node metadata: `get` answers for top-level keys (`WORKLOAD_NAME`,
    /// `NAMESPACE`, `CLUSTER_ID`) and `label` for the `LABELS` map.
    pub fn from_node_metadata<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> Self {
        let s = |v: Option<&str>| Arc::<str>::from(v.unwrap_or_default());
        let app = label("app");
        let version = label("version");
        Self {
            name: s(get("WORKLOAD_NAME")),
            namespace: s(get("NAMESPACE")),
            cluster: s(get("CLUSTER_ID")),
            app: s(app),
            version: s(version),
            canonical_service: s(label("service.istio.io/canonical-name").or(app)),
            canonical_revision: s(label("service.istio.io/canonical-revision").or(version)),
            principal: Arc::from(""),
        }
    }

    /// Reads the endpoint metadata istiod sends with each endpoint (`filter_metadata.istio.
    /// workload`): `workload;namespace;canonical-name;canonical-revision;cluster-id`, with
    /// any further fields ignored, as Istio's proxies read it (which leave `app` and
    /// `version` unknown). `None` when it has fewer than five fields.
    pub fn from_endpoint_metadata(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let mut next = || parts.next().map(Arc::<str>::from);
        let (name, namespace, canonical_service, canonical_revision, cluster) =
            (next()?, next()?, next()?, next()?, next()?);
        Some(Self {
            name,
            namespace,
            cluster,
            canonical_service,
            canonical_revision,
            ..Self::default()
        })
    }

    /// This workload with the principal taken from a SPIFFE ID (`spiffe://td/ns/N/sa/S`),
    /// and its namespace from the ID when it has one: a verified identity outranks what the
    /// peer's metadata says of itself (Istio's rule).
    pub fn with_spiffe_id(mut self, id: &str) -> Self {
        self.principal = Arc::from(id);
        if let Some(ns) = spiffe_namespace(id)
            && *self.namespace != *ns
        {
            self.namespace = Arc::from(ns);
        }
        self
    }
}

/// The namespace in a SPIFFE ID of Istio's form (`spiffe://td/ns/NAMESPACE/sa/ACCOUNT`).
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?;
    let mut segments = path.split('/').skip(1);
    (segments.next()? == "ns")
        .then(|| segments.next())
        .flatten()
        .filter(|ns| !ns.is_empty())
}

/// The service host of an Istio cluster name (`outbound|PORT|SUBSET|HOST` or the inbound
/// form), which `destination_service` reports.
pub fn cluster_service(cluster: &str) -> Option<&str> {
    let mut parts = cluster.splitn(4, '|');
    let direction = parts.next()?;
    if !matches!(direction, "outbound" | "inbound") {
        return None;
    }
    let host = parts.nth(2)?;
    (!host.is_empty()).then_some(host)
}

/// The upper bounds (in milliseconds) of `istio_request_duration_milliseconds`: Istio sets
/// none, so these are Envoy's defaults.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// The upper bounds (in bytes) of `istio_request_bytes` and `istio_response_bytes`: Envoy's
/// defaults, as for durations.
pub const SIZE_BUCKETS: [f64; 19] = DURATION_BUCKETS_MS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_metadata_has_five_fields() {
        let w = Workload::from_endpoint_metadata("reviews-v2;shop;reviews;v2;Kubernetes").unwrap();
        assert_eq!(
            (
                &*w.name,
                &*w.namespace,
                &*w.canonical_service,
                &*w.canonical_revision,
                &*w.cluster,
                &*w.app,
                &*w.version
            ),
            ("reviews-v2", "shop", "reviews", "v2", "Kubernetes", "", "")
        );
        assert_eq!(Workload::from_endpoint_metadata("a;b;c;d"), None);
        assert_eq!(Workload::from_endpoint_metadata("a;;;b"), None);
        assert_eq!(
            Workload::from_endpoint_metadata("a;b;c;d;e;f").map(|w| w.cluster),
            Some(Arc::from("e"))
        );
    }

    #[test]
    fn node_metadata_falls_back_to_app_and_version_for_the_canonical_labels() {
        let top = |k: &str| match k {
            "WORKLOAD_NAME" => Some("web"),
            "NAMESPACE" => Some("front"),
            "CLUSTER_ID" => Some("c1"),
            _ => None,
        };
        let w = Workload::from_node_metadata(top, |k| match k {
            "app" => Some("web-app"),
            "version" => Some("v3"),
            _ => None,
        });
        assert_eq!(
            (&*w.canonical_service, &*w.canonical_revision, &*w.app),
            ("web-app", "v3", "web-app")
        );
        let w = Workload::from_node_metadata(top, |k| match k {
            "app" => Some("web-app"),
            "service.istio.io/canonical-name" => Some("web"),
            _ => None,
        });
        assert_eq!(
            (&*w.canonical_service, &*w.canonical_revision, &*w.version),
            ("web", "", "")
        );
    }

    #[test]
    fn spiffe_ids_and_cluster_names() {
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/shop/sa/cart"),
            Some("shop")
        );
        assert_eq!(spiffe_namespace("spiffe://cluster.local/sa/cart"), None);
        assert_eq!(spiffe_namespace("spiffe://cluster.local/ns//sa/x"), None);
        let w = Workload::default().with_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(
            (&*w.principal, &*w.namespace),
            ("spiffe://cluster.local/ns/shop/sa/cart", "shop")
        );
        // The verified namespace wins over the one a peer's metadata claims.
        let claimed = Workload {
            namespace: Arc::from("billing"),
            ..Workload::default()
        };
        let w = claimed.with_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(&*w.namespace, "shop");
        assert_eq!(
            cluster_service("outbound|9080|v1|reviews.shop.svc.cluster.local"),
            Some("reviews.shop.svc.cluster.local")
        );
        assert_eq!(cluster_service("inbound|8080||"), None);
        assert_eq!(cluster_service("static-cluster"), None);
    }
}
