use http::{HeaderMap, Method, Uri};

use super::*;
use crate::identity::SubjectAltNames;
use crate::matcher::{HeaderMatchSpec, StringPattern};

fn leaf(uri: &str) -> LeafInfo {
    LeafInfo {
        sans: SubjectAltNames {
            uri: vec![uri.into()],
            ..Default::default()
        },
        subject: String::new(),
        serial: "01".into(),
        not_before: std::time::UNIX_EPOCH,
        not_after: std::time::UNIX_EPOCH,
    }
}

fn m(p: StringPattern) -> StringMatcherSpec {
    StringMatcherSpec {
        pattern: p,
        ignore_case: false,
    }
}

/// istiod's shape: a DENY filter for namespace `blocked`, then an ALLOW filter for
/// `sa/client` doing GET on `/orders*`.
fn istio_like() -> Rbac {
    let deny = RbacSpec {
        name: "envoy.filters.http.rbac.DENY".into(),
        action: Some(RbacAction::Deny),
        policies: vec![(
            "ns[default]-policy[deny-blocked]-rule[0]".into(),
            PolicySpec {
                permissions: vec![PermissionSpec::Any],
                principals: vec![PrincipalSpec::Or(vec![PrincipalSpec::Authenticated(Some(
                    m(StringPattern::Regex(".*/ns/blocked/.*".into())),
                ))])],
            },
        )],
        audit: AuditCondition::OnDeny,
    };
    let allow = RbacSpec {
        name: "envoy.filters.http.rbac".into(),
        action: Some(RbacAction::Allow),
        policies: vec![(
            "ns[default]-policy[orders]-rule[0]".into(),
            PolicySpec {
                permissions: vec![PermissionSpec::And(vec![
                    PermissionSpec::Or(vec![PermissionSpec::Header(HeaderMatcherSpec::new(
                        ":method",
                        HeaderMatchSpec::String(StringMatcherSpec::exact("GET")),
                    ))]),
                    PermissionSpec::Or(vec![PermissionSpec::UrlPath(StringMatcherSpec::prefix(
                        "/orders",
                    ))]),
                ])],
                principals: vec![PrincipalSpec::And(vec![PrincipalSpec::Or(vec![
                    PrincipalSpec::Authenticated(Some(StringMatcherSpec::prefix(
                        "spiffe://cluster.local/ns/default/sa/client",
                    ))),
                ])])],
            },
        )],
        audit: AuditCondition::None,
    };
    Rbac::new(&[deny, allow]).unwrap()
}

fn judge(rbac: &Rbac, method: Method, path: &str, peer: Option<&LeafInfo>) -> Verdict {
    let uri: Uri = format!("http://ui:9080{path}").parse().unwrap();
    let headers = HeaderMap::new();
    rbac.evaluate(&AuthzRequest {
        request: RouteRequest::new(&method, &uri, &headers),
        source: "10.0.0.9:40000".parse().unwrap(),
        destination: "10.0.0.1:9080".parse().unwrap(),
        peer,
        tls: peer.is_some(),
        auth: None,
    })
}

#[test]
fn deny_then_allow_as_istiod_sends_them() {
    let rbac = istio_like();
    let client = leaf("spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(
        judge(&rbac, Method::GET, "/orders/1", Some(&client)).denied,
        None
    );
    let v = judge(&rbac, Method::POST, "/orders/1", Some(&client));
    assert_eq!(
        v.denied.unwrap().to_string(),
        "no policy of envoy.filters.http.rbac allows it"
    );
    // No certificate: the ALLOW principal cannot match.
    assert!(
        judge(&rbac, Method::GET, "/orders/1", None)
            .denied
            .is_some()
    );
    // The DENY filter comes first, and audits what it denies.
    let blocked = leaf("spiffe://cluster.local/ns/blocked/sa/client");
    let v = judge(&rbac, Method::GET, "/orders/1", Some(&blocked));
    assert_eq!(
        v.denied.as_ref().unwrap().to_string(),
        "denied by policy \"ns[default]-policy[deny-blocked]-rule[0]\" of envoy.filters.http.rbac.DENY"
    );
    assert_eq!(
        v.audit,
        [AuditRecord {
            filter: "envoy.filters.http.rbac.DENY".into(),
            policy: Some("ns[default]-policy[deny-blocked]-rule[0]".into()),
            authorized: false
        }]
    );
}

#[test]
fn principal_names_come_from_uri_then_dns_then_subject() {
    let rbac = Rbac::new(&[RbacSpec {
        name: "rbac".into(),
        action: Some(RbacAction::Allow),
        policies: vec![(
            "p".into(),
            PolicySpec {
                permissions: vec![PermissionSpec::Any],
                principals: vec![PrincipalSpec::Authenticated(Some(
                    StringMatcherSpec::exact("db.example"),
                ))],
            },
        )],
        audit: AuditCondition::None,
    }])
    .unwrap();
    let mut dns = leaf("x");
    dns.sans.uri.clear();
    dns.sans.dns.push("db.example".into());
    assert_eq!(judge(&rbac, Method::GET, "/", Some(&dns)).denied, None);
    // With a URI SAN present, the DNS SAN is not looked at.
    let mut both = dns.clone();
    both.sans.uri.push("spiffe://td/ns/a/sa/b".into());
    assert!(judge(&rbac, Method::GET, "/", Some(&both)).denied.is_some());
    let mut subject = leaf("x");
    subject.sans.uri.clear();
    subject.subject = "db.example".into();
    assert_eq!(judge(&rbac, Method::GET, "/", Some(&subject)).denied, None);
}

#[test]
fn what_cannot_be_evaluated_never_matches_and_bad_input_is_refused() {
    let allow_if = |permission: PermissionSpec| {
        Rbac::new(&[RbacSpec {
            name: "rbac".into(),
            action: Some(RbacAction::Allow),
            policies: vec![(
                "p".into(),
                PolicySpec {
                    permissions: vec![permission],
                    principals: vec![PrincipalSpec::Any],
                },
            )],
            audit: AuditCondition::None,
        }])
    };
    // Metadata never matches: an ALLOW on it denies (fails closed).
    let rbac = allow_if(PermissionSpec::Metadata).unwrap();
    assert!(judge(&rbac, Method::GET, "/", None).denied.is_some());
    // ... and under `not` too: what cannot be evaluated never lets a request through.
    let rbac = allow_if(PermissionSpec::Not(Box::new(PermissionSpec::Metadata))).unwrap();
    assert!(judge(&rbac, Method::GET, "/", None).denied.is_some());
    let rbac = allow_if(PermissionSpec::DestinationPort(9080)).unwrap();
    assert_eq!(judge(&rbac, Method::GET, "/", None).denied, None);
    let rbac = allow_if(PermissionSpec::DestinationIp(CidrSpec {
        address: "10.0.0.77".into(),
        prefix_len: 24,
    }))
    .unwrap();
    assert_eq!(judge(&rbac, Method::GET, "/", None).denied, None);
    let e = allow_if(PermissionSpec::Header(HeaderMatcherSpec::new(
        "grpc-timeout",
        HeaderMatchSpec::Present(true),
    )))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "http_filters[\"rbac\"].rules.policies[\"p\"].permissions[0].header.name: matching on \"grpc-timeout\" is not allowed"
    );
    // LOG and rule-less filters do nothing.
    let log = Rbac::new(&[RbacSpec {
        name: "log".into(),
        action: Some(RbacAction::Log),
        policies: vec![],
        audit: AuditCondition::None,
    }])
    .unwrap();
    assert!(log.is_empty());
}

#[test]
fn cidr_ranges_mask_and_clamp() {
    let c = Cidr::new(&CidrSpec {
        address: "10.1.2.3".into(),
        prefix_len: 16,
    })
    .unwrap();
    assert!(c.contains("10.1.200.1".parse().unwrap()));
    assert!(!c.contains("10.2.0.1".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
    let all = Cidr::new(&CidrSpec {
        address: "0.0.0.0".into(),
        prefix_len: 0,
    })
    .unwrap();
    assert!(all.contains("192.0.2.1".parse().unwrap()));
    assert!(
        !all.contains("2001:db8::1".parse().unwrap()),
        "/0 keeps the family"
    );
    let host = Cidr::new(&CidrSpec {
        address: "2001:db8::1".into(),
        prefix_len: 500,
    })
    .unwrap();
    assert!(host.contains("2001:db8::1".parse().unwrap()));
    assert!(!host.contains("2001:db8::2".parse().unwrap()));
}

#[test]
fn request_principals_and_claims_come_from_the_verified_token() {
    use crate::jwt::{AuthField, RequestAuth};
    // istiod's `requestPrincipals: ["https://idp/*"]` and `request.auth.claims[groups]: ops`.
    let rbac = Rbac::new(&[RbacSpec {
        name: "envoy.filters.http.rbac".into(),
        action: Some(RbacAction::Allow),
        policies: vec![(
            "ns[default]-policy[jwt]-rule[0]".into(),
            PolicySpec {
                permissions: vec![PermissionSpec::Any],
                principals: vec![PrincipalSpec::And(vec![
                    PrincipalSpec::Metadata(Some((
                        AuthField::Principal,
                        StringMatcherSpec::prefix("https://idp/"),
                    ))),
                    PrincipalSpec::Metadata(Some((
                        AuthField::Claim(vec!["groups".into()]),
                        StringMatcherSpec::exact("ops"),
                    ))),
                ])],
            },
        )],
        audit: AuditCondition::None,
    }])
    .unwrap();
    let uri: Uri = "/".parse().unwrap();
    let headers = HeaderMap::new();
    let verdict = |auth: Option<&RequestAuth>| {
        rbac.evaluate(&AuthzRequest {
            request: RouteRequest::new(&Method::GET, &uri, &headers),
            source: "10.0.0.9:40000".parse().unwrap(),
            destination: "10.0.0.1:9080".parse().unwrap(),
            peer: None,
            tls: false,
            auth,
        })
        .denied
    };
    let claims = |groups: serde_json::Value| {
        let mut c = serde_json::Map::new();
        c.insert("groups".into(), groups);
        RequestAuth {
            provider: "origins-0".into(),
            principal: "https://idp/alice".into(),
            issuer: "https://idp".into(),
            subject: "alice".into(),
            audiences: vec![],
            presenter: None,
            payload: String::new(),
            claims: c,
        }
    };
    assert_eq!(
        verdict(Some(&claims(serde_json::json!(["dev", "ops"])))),
        None
    );
    assert_eq!(verdict(Some(&claims(serde_json::json!("ops")))), None);
    assert!(verdict(Some(&claims(serde_json::json!(["dev"])))).is_some());
    // No token: the principal cannot match, so the ALLOW denies.
    assert!(verdict(None).is_some());
}

#[test]
fn a_deny_policy_that_cannot_be_evaluated_denies() {
    use crate::jwt::AuthField;
    // DENY for a request principal, on a chain without a JWT filter (istiod's gRPC shape).
    let deny = |principal: PrincipalSpec| RbacSpec {
        name: "envoy.filters.http.rbac.DENY".into(),
        action: Some(RbacAction::Deny),
        policies: vec![(
            "ns[default]-policy[no-mallory]-rule[0]".into(),
            PolicySpec {
                permissions: vec![PermissionSpec::Any],
                principals: vec![principal],
            },
        )],
        audit: AuditCondition::None,
    };
    let mallory = PrincipalSpec::Metadata(Some((
        AuthField::Principal,
        StringMatcherSpec::exact("https://idp/mallory"),
    )));
    let without_jwt = Rbac::with_authn(&[deny(mallory.clone())], false).unwrap();
    assert_eq!(
        judge(&without_jwt, Method::GET, "/", None)
            .denied
            .unwrap()
            .to_string(),
        "denied by policy \"ns[default]-policy[no-mallory]-rule[0]\" of envoy.filters.http.rbac.DENY"
    );
    // Under `not`, the unknown reads the other way: the DENY still denies more, not less.
    let not_alice = PrincipalSpec::Not(Box::new(mallory.clone()));
    let rbac = Rbac::with_authn(&[deny(not_alice)], false).unwrap();
    assert!(judge(&rbac, Method::GET, "/", None).denied.is_some());
    // With a JWT filter the principal is known: no token, no match, no denial.
    let with_jwt = Rbac::with_authn(&[deny(mallory)], true).unwrap();
    assert_eq!(judge(&with_jwt, Method::GET, "/", None).denied, None);
    // Other metadata in a DENY policy matches too.
    let rbac = Rbac::with_authn(&[deny(PrincipalSpec::Metadata(None))], true).unwrap();
    assert!(judge(&rbac, Method::GET, "/", None).denied.is_some());
}

mod index {
    use proptest::prelude::*;

    use super::*;
    use crate::test_support::proptest_config;

    const PATHS: [&str; 6] = ["/a", "/ab", "/abc", "/b", "/b/c", "/é"];

    fn url(kind: u8, p: &str) -> PermissionSpec {
        PermissionSpec::UrlPath(match kind % 3 {
            0 => StringMatcherSpec::exact(p),
            1 => StringMatcherSpec::prefix(p),
            _ => StringMatcherSpec {
                pattern: StringPattern::Prefix(p.to_uppercase()),
                ignore_case: true,
            },
        })
    }

    fn perm(shape: u8, kind: u8, a: usize, b: usize) -> PermissionSpec {
        let (pa, pb) = (PATHS[a % PATHS.len()], PATHS[b % PATHS.len()]);
        match shape % 5 {
            0 => url(kind, pa),
            1 => PermissionSpec::And(vec![
                PermissionSpec::Header(HeaderMatcherSpec::new(
                    ":method",
                    HeaderMatchSpec::String(StringMatcherSpec::exact("GET")),
                )),
                url(kind, pa),
            ]),
            2 => PermissionSpec::Or(vec![url(kind, pa), url(kind.wrapping_add(1), pb)]),
            3 => PermissionSpec::Not(Box::new(url(kind, pa))),
            _ => PermissionSpec::Any,
        }
    }

    proptest! {
        #![proptest_config(proptest_config(256))]
        /// The path index picks the same policy as trying each policy in turn.
        #[test]
        fn the_index_picks_what_a_linear_scan_picks(
            policies in prop::collection::vec((any::<u8>(), any::<u8>(), 0usize..6, 0usize..6), 4..20),
            deny in any::<bool>(),
            path in prop::sample::select(vec!["/", "/a", "/ab", "/abc/d", "/b", "/b/c", "/bc", "/é/x", "/A", ""]),
            post in any::<bool>(),
        ) {
            let spec = RbacSpec {
                name: "f".into(),
                action: Some(if deny { RbacAction::Deny } else { RbacAction::Allow }),
                policies: policies
                    .iter()
                    .enumerate()
                    .map(|(i, (shape, kind, a, b))| {
                        (
                            format!("p{i:02}"),
                            PolicySpec {
                                permissions: vec![perm(*shape, *kind, *a, *b)],
                                principals: vec![PrincipalSpec::Any],
                            },
                        )
                    })
                    .collect(),
                audit: AuditCondition::OnDenyAndAllow,
            };
            let indexed = Rbac::new(std::slice::from_ref(&spec)).unwrap();
            let linear = Rbac::new(&[spec]).unwrap().without_index();
            let method = if post { Method::POST } else { Method::GET };
            let uri: Uri = format!("http://ui{path}").parse().unwrap_or_else(|_| Uri::from_static("http://ui/"));
            let headers = HeaderMap::new();
            let request = AuthzRequest {
                request: RouteRequest::new(&method, &uri, &headers),
                source: "10.0.0.9:40000".parse().unwrap(),
                destination: "10.0.0.1:9080".parse().unwrap(),
                peer: None,
                tls: false,
                auth: None,
            };
            let (a, b) = (indexed.evaluate(&request), linear.evaluate(&request));
            prop_assert_eq!(a.denied, b.denied);
            prop_assert_eq!(a.audit, b.audit);
        }
    }
}
