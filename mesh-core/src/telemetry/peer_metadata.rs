//! Istio's peer-metadata exchange over HTTP: `x-envoy-peer-metadata-id` (the node id) and
//! `x-envoy-peer-metadata` (base64 of a `google.protobuf.Struct` of the node metadata),
//! which a sidecar sends with each request and a sidecar server answers with, so that both
//! sides' metrics name the other workload.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use prost::Message;

use super::Workload;

/// The header with the encoded metadata.
pub const METADATA_HEADER: &str = "x-envoy-peer-metadata";
/// The header with the node id.
pub const METADATA_ID_HEADER: &str = "x-envoy-peer-metadata-id";

/// The standard alphabet, padding optional: what Istio's sidecars read (they decode without
/// requiring padding, though they write it).
const READ: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The longest header value read: metadata is a few hundred bytes; anything far larger is
/// not a peer's.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// `google.protobuf.Struct`, with fields in key order so that the encoding is deterministic.
#[derive(Clone, PartialEq, Message)]
struct PbStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, PbValue>,
}

/// `google.protobuf.Value`, the kinds the metadata uses.
#[derive(Clone, PartialEq, Message)]
struct PbValue {
    #[prost(oneof = "Kind", tags = "3, 5")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(string, tag = "3")]
    String(String),
    #[prost(message, tag = "5")]
    Struct(PbStruct),
}

fn string(v: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::String(v.to_string())),
    }
}

/// The header value that describes `local` to its peers: `NAME` (`pod`), `NAMESPACE`,
/// `WORKLOAD_NAME`, `CLUSTER_ID`, `OWNER` and `LABELS` (app, version, canonical name and
/// revision), empty fields left out.
pub fn encode(local: &Workload, pod: &str) -> String {
    let mut fields = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            fields.insert(k.to_string(), string(v));
        }
    };
    put("NAME", pod);
    put("NAMESPACE", &local.namespace);
    put("WORKLOAD_NAME", &local.name);
    put("CLUSTER_ID", &local.cluster);
    if !local.namespace.is_empty() && !local.name.is_empty() {
        put(
            "OWNER",
            &format!(
                "kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
                local.namespace, local.name
            ),
        );
    }
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("app", &local.app),
        ("version", &local.version),
        ("service.istio.io/canonical-name", &local.canonical_service),
        (
            "service.istio.io/canonical-revision",
            &local.canonical_revision,
        ),
    ] {
        if !v.is_empty() {
            labels.insert(k.to_string(), string(v));
        }
    }
    if !labels.is_empty() {
        fields.insert(
            "LABELS".into(),
            PbValue {
                kind: Some(Kind::Struct(PbStruct { fields: labels })),
            },
        );
    }
    STANDARD.encode(PbStruct { fields }.encode_to_vec())
}

/// The workload a peer's `x-envoy-peer-metadata` describes; `None` when the value is not
/// base64 of a protobuf `Struct` (or is unreasonably large).
pub fn decode(header: &[u8]) -> Option<Workload> {
    if header.len() > MAX_HEADER_BYTES {
        return None;
    }
    let bytes = READ.decode(header).ok()?;
    let s = PbStruct::decode(&*bytes).ok()?;
    let top = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::String(v)) => Some(v.as_str()),
        _ => None,
    };
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::Struct(l)) => Some(l),
        _ => None,
    };
    let label = |k: &str| match labels?.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::String(v)) => Some(v.as_str()),
        _ => None,
    };
    Some(Workload::from_node_metadata(top, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_one_side_encodes_the_other_reads_back() {
        let w = Workload::from_node_metadata(
            |k| match k {
                "WORKLOAD_NAME" => Some("reviews-v2"),
                "NAMESPACE" => Some("shop"),
                "CLUSTER_ID" => Some("east"),
                _ => None,
            },
            |k| match k {
                "app" => Some("reviews"),
                "version" => Some("v2"),
                _ => None,
            },
        );
        let header = encode(&w, "reviews-v2-5d8f-abcde");
        assert_eq!(decode(header.as_bytes()), Some(w.clone()));
        // Deterministic: the same workload always encodes the same.
        assert_eq!(encode(&w, "reviews-v2-5d8f-abcde"), header);
        // Read without its padding too, as sidecars read it.
        let unpadded = header.trim_end_matches('=');
        assert_ne!(
            unpadded.len(),
            header.len(),
            "this encoding has padding to drop"
        );
        assert_eq!(decode(unpadded.as_bytes()), Some(w.clone()));
    }

    #[test]
    fn garbage_is_no_peer() {
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(STANDARD.encode([0xff, 0xff, 0xff]).as_bytes()), None);
        assert_eq!(decode(&vec![b'A'; MAX_HEADER_BYTES + 4]), None);
        // An empty struct is a peer that said nothing.
        assert_eq!(decode(b""), Some(Workload::default()));
    }
}
