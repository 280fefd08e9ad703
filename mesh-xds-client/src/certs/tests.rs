use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;

use super::file_watcher::FileWatcher;
use super::*;
use crate::bootstrap::FileWatcherConfig;
use crate::testing::ca::TestCa;

const ID: &str = "spiffe://cluster.local/ns/default/sa/ui";

fn config(dir: &Path) -> FileWatcherConfig {
    FileWatcherConfig {
        certificate_file: Some(dir.join("cert-chain.pem")),
        private_key_file: Some(dir.join("key.pem")),
        ca_certificate_file: Some(dir.join("root-cert.pem")),
        refresh_interval: Duration::from_secs(900),
    }
}

fn write(dir: &Path, file: &str, body: &str) {
    std::fs::write(dir.join(file), body).unwrap();
}

/// A watcher over a directory holding a good identity, polled once.
fn watching() -> (
    tempfile::TempDir,
    TestCa,
    crate::testing::ca::Leaf,
    CertificatePublisher,
    FileWatcher,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mesh-test-ca");
    let leaf = ca.workload(ID);
    write(dir.path(), "cert-chain.pem", &leaf.chain_pem);
    write(dir.path(), "key.pem", &leaf.key_pem);
    write(dir.path(), "root-cert.pem", &ca.root_pem());
    let publisher = CertificatePublisher::new();
    let mut w = FileWatcher::new("default", config(dir.path()), publisher.clone());
    w.poll();
    (dir, ca, leaf, publisher, w)
}

fn default_of(p: &CertificatePublisher) -> ProviderCerts {
    p.current().provider("default").cloned().unwrap_or_default()
}

#[test]
fn the_agents_three_files_become_one_identity_and_its_roots() {
    let (_dir, _ca, leaf, publisher, mut w) = watching();
    let p = default_of(&publisher);
    let id = p.identity.expect("identity");
    assert_eq!(id.spiffe_id(), Some(ID));
    assert_eq!(
        id.chain().len(),
        2,
        "leaf and CA, as istio-agent writes them"
    );
    assert_eq!(id.leaf().as_ref(), &leaf.der[..]);
    assert_eq!(p.roots.expect("roots").certs().len(), 1);
    assert_eq!(p.last_error, None);
    // Unchanged files publish nothing new.
    let generation = publisher.current().generation();
    w.poll();
    assert_eq!(publisher.current().generation(), generation);
    // The key never reaches Debug output.
    let shown = format!("{:?}", publisher.current());
    assert!(
        shown.contains("<redacted>") && !shown.contains("PRIVATE"),
        "{shown}"
    );
}

#[test]
fn a_key_that_does_not_match_its_chain_keeps_the_last_good_pair_until_they_match() {
    let (dir, ca, _first, publisher, mut w) = watching();
    let serial = default_of(&publisher)
        .identity
        .unwrap()
        .serial()
        .to_string();

    // The agent has written the new key, not yet the new chain.
    let second = ca.workload(ID);
    write(dir.path(), "key.pem", &second.key_pem);
    w.poll();
    let p = default_of(&publisher);
    assert_eq!(
        p.identity.as_ref().unwrap().serial(),
        serial,
        "the old pair stays"
    );
    let error = p.last_error.unwrap();
    assert!(
        error.starts_with("the private key does not match the certificate with serial "),
        "{error}"
    );
    assert!(error.ends_with("(a rotation in progress?); keeping the last matching pair"));

    // Now the chain: the new pair is published and the error cleared.
    write(dir.path(), "cert-chain.pem", &second.chain_pem);
    w.poll();
    let p = default_of(&publisher);
    assert_eq!(p.identity.unwrap().leaf().as_ref(), &second.der[..]);
    assert_eq!(p.last_error, None);
}

#[test]
fn unreadable_or_garbage_files_never_replace_good_certificates() {
    let (dir, ca, leaf, publisher, mut w) = watching();

    write(dir.path(), "root-cert.pem", "not a pem\n");
    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    w.poll();
    let p = default_of(&publisher);
    assert_eq!(p.identity.unwrap().leaf().as_ref(), &leaf.der[..]);
    assert_eq!(p.roots.unwrap().certs()[0].as_ref(), {
        let roots = parse_roots(ca.root_pem().as_bytes(), "x").unwrap();
        roots.certs()[0].to_vec()
    });
    let key = dir.path().join("key.pem");
    let roots = dir.path().join("root-cert.pem");
    assert_eq!(
        p.last_error.unwrap(),
        format!(
            "{}: No such file or directory (os error 2); {}: no PEM certificate",
            key.display(),
            roots.display()
        )
    );
}

#[test]
fn nothing_is_published_before_the_files_exist() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = CertificatePublisher::new();
    let mut w = FileWatcher::new("default", config(dir.path()), publisher.clone());
    w.poll();
    let p = default_of(&publisher);
    assert!(p.identity.is_none() && p.roots.is_none());
    assert!(
        p.last_error
            .unwrap()
            .contains("cert-chain.pem: No such file")
    );
}

#[test]
fn pem_errors_name_the_file() {
    let ca = TestCa::new("mesh-test-ca");
    let a = ca.workload(ID);
    assert_eq!(
        parse_identity(a.chain_pem.as_bytes(), "chain.pem", b"", "key.pem")
            .unwrap_err()
            .to_string(),
        "key.pem: no PEM private key (PKCS#8, PKCS#1 or SEC1)"
    );
    assert_eq!(
        parse_identity(b"", "chain.pem", a.key_pem.as_bytes(), "key.pem")
            .unwrap_err()
            .to_string(),
        "chain.pem: no PEM certificate"
    );
}

#[test]
fn a_ca_answer_needs_the_leaf_and_the_root_and_a_leaf_for_our_key() {
    use super::istio_ca::{IstioCertificateResponse, issued, renewal_delay};
    use crate::testing::ca::Validity;
    let ca = TestCa::new("istio-ca");
    let key = rcgen::KeyPair::generate().unwrap();
    let sans = || vec![rcgen::SanType::URI(ID.try_into().unwrap())];
    let day = Duration::from_secs(86_400);
    let leaf = ca.leaf_for_key(&key, sans(), Validity::for_ttl(day));
    let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.der.clone()));
    let answer = |chain: Vec<String>| IstioCertificateResponse { cert_chain: chain };

    let (cert, roots) = issued(
        answer(vec![leaf_pem.clone(), ca.root_pem()]),
        key.serialize_der(),
    )
    .unwrap();
    assert_eq!(cert.spiffe_id(), Some(ID));
    assert_eq!((cert.chain().len(), roots.certs().len()), (1, 1));
    assert_eq!(
        issued(answer(vec![leaf_pem.clone()]), key.serialize_der()).unwrap_err(),
        "the answer holds 1 certificate(s); expected the leaf and the root"
    );
    let other = rcgen::KeyPair::generate().unwrap();
    assert!(
        issued(answer(vec![leaf_pem, ca.root_pem()]), other.serialize_der())
            .unwrap_err()
            .starts_with("the private key does not match the certificate with serial ")
    );

    // Renewal at half the lifetime (an hour of backdating plus a day here), ±1%.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    let now = cert.not_before();
    for _ in 0..100 {
        let d = renewal_delay(&cert, now, &mut rng).as_secs_f64();
        let half = lifetime.as_secs_f64() / 2.0;
        assert!(
            (d - half).abs() <= lifetime.as_secs_f64() * 0.01 + 1.0,
            "{d} vs {half}"
        );
    }
    // Past the renewal time: at once.
    assert_eq!(
        renewal_delay(&cert, cert.not_after(), &mut rng),
        Duration::ZERO
    );
}
