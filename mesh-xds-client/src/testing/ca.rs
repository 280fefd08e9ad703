//! A certificate authority for tests: roots, SPIFFE workload leaves and servers, made with
//! rcgen the way Istio's CA issues them (URI SAN, server and client auth).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A leaf certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The chain: the leaf, then the CA (as istio-agent writes `cert-chain.pem`).
    pub chain_pem: String,
    /// The PKCS#8 key.
    pub key_pem: String,
    /// The leaf alone, DER.
    pub der: Vec<u8>,
}

/// A self-signed CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not before.
    pub not_before: SystemTime,
    /// Not after.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago to `ttl` from now.
    pub fn for_ttl(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + ttl,
        }
    }

    /// Ended an hour ago.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        }
    }

    /// Starts in a day.
    pub fn not_yet() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now + Duration::from_secs(86_400),
            not_after: now + Duration::from_secs(2 * 86_400),
        }
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl TestCa {
    /// A CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let v = Validity::for_ttl(Duration::from_secs(10 * 365 * 86_400));
        params.not_before = offset(v.not_before);
        params.not_after = offset(v.not_after);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM (`root-cert.pem`).
    pub fn root_pem(&self) -> String {
        self.pem.clone()
    }

    /// A workload leaf for `spiffe_id`, valid for a day.
    pub fn workload(&self, spiffe_id: &str) -> Leaf {
        self.leaf(
            vec![SanType::URI(spiffe_id.try_into().expect("URI SAN"))],
            Validity::for_ttl(Duration::from_secs(86_400)),
        )
    }

    /// A leaf with these SANs and validity, for server and client auth.
    pub fn leaf(&self, sans: Vec<SanType>, validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut leaf = self.leaf_for_key(&key, sans, validity);
        leaf.key_pem = key.serialize_pem();
        leaf
    }

    /// A leaf over someone else's key (a CSR's); `key_pem` is left empty.
    pub fn leaf_for_key(
        &self,
        key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        validity: Validity,
    ) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = offset(validity.not_before);
        params.not_after = offset(validity.not_after);
        params.serial_number = Some(rand::random::<[u8; 8]>().map(|b| b & 0x7f).to_vec().into());
        let cert = params.signed_by(key, &self.issuer).expect("signed leaf");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: String::new(),
            der: cert.der().to_vec(),
        }
    }
}
