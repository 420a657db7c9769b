//! Certificates made by a test (rcgen): a certificate authority per test and the server and
//! client certificates it signs. Private NATS servers and PostgreSQL clusters serve them.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub use rcgen::ExtendedKeyUsagePurpose as Usage;

/// A certificate authority made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA's certificate (PEM), what clients and servers are told to trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` (SANs: host names or IP addresses) with common name `cn`,
    /// for `usages`: (certificate PEM, key PEM).
    pub fn issue(&self, cn: &str, names: &[&str], usages: &[Usage]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}
