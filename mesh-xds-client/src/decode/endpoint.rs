//! EDS: cluster load assignments.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3 as pb;
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::{
    ClusterLoadAssignmentSpec, EndpointSpec, HealthStatus, Locality, LocalityEndpointsSpec,
};

use super::fraction;

/// Maps a load assignment to a spec. Endpoint labels come from the `istio` filter metadata.
pub fn load_assignment_spec(
    cla: &pb::ClusterLoadAssignment,
) -> Result<ClusterLoadAssignmentSpec, ConfigError> {
    let err = |e: FieldError| e.resource(ResourceKind::ClusterLoadAssignment, &cla.cluster_name);
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (li, l) in cla.endpoints.iter().enumerate() {
        let at = |e: FieldError| err(e.within(format!("endpoints[{li}]")));
        let locality = l.locality.as_ref().map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        });
        let endpoints = l
            .lb_endpoints
            .iter()
            .enumerate()
            .map(|(ei, e)| endpoint(e).map_err(|x| at(x.within(format!("lb_endpoints[{ei}]")))))
            .collect::<Result<_, _>>()?;
        localities.push(LocalityEndpointsSpec {
            locality: locality.unwrap_or_default(),
            weight: l.load_balancing_weight.as_ref().map(|w| w.value),
            priority: l.priority,
            endpoints,
        });
    }
    let policy = cla.policy.as_ref();
    Ok(ClusterLoadAssignmentSpec {
        cluster_name: cla.cluster_name.clone(),
        localities,
        overprovisioning_factor: policy
            .and_then(|p| p.overprovisioning_factor.as_ref())
            .map(|f| f.value),
        drop_overloads: policy
            .map(|p| {
                p.drop_overloads
                    .iter()
                    .map(|d| {
                        (
                            d.category.clone(),
                            d.drop_percentage.as_ref().map(fraction).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn endpoint(e: &pb::LbEndpoint) -> Result<EndpointSpec, FieldError> {
    use pb::lb_endpoint::HostIdentifier;
    let ep = match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        _ => return Err(FieldError::new("endpoint", "is not set")),
    };
    let sa = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(Address::SocketAddress(sa)) => sa,
        _ => {
            return Err(FieldError::new(
                "endpoint.address.socket_address",
                "is not set",
            ));
        }
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        FieldError::new(
            "endpoint.address.socket_address.address",
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p > 0 && p <= u32::from(u16::MAX) => p as u16,
        _ => {
            return Err(FieldError::new(
                "endpoint.address.socket_address.port_value",
                "must be set to a port in 1..=65535",
            ));
        }
    };
    use envoy_types::pb::envoy::config::core::v3::HealthStatus as H;
    let health = match H::try_from(e.health_status) {
        Ok(H::Healthy) => HealthStatus::Healthy,
        Ok(H::Unhealthy) => HealthStatus::Unhealthy,
        Ok(H::Draining) => HealthStatus::Draining,
        Ok(H::Timeout) => HealthStatus::Timeout,
        Ok(H::Degraded) => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    let mut labels = BTreeMap::new();
    if let Some(istio) = e
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
    {
        for (k, v) in &istio.fields {
            if let Some(Kind::StringValue(s)) = &v.kind {
                labels.insert(k.clone(), s.clone());
            }
        }
    }
    Ok(EndpointSpec {
        address: SocketAddr::new(ip, port),
        weight: e.load_balancing_weight.as_ref().map(|w| w.value),
        health,
        hostname: Some(ep.hostname.clone()).filter(|h| !h.is_empty()),
        labels,
    })
}
