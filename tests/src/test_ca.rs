//! A certificate authority of a test's own (not the cluster's), for servers
//! and clients the cluster must not, or need not, trust by itself.

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, Issuer, KeyPair};

pub struct TestCa {
    /// The CA's certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("a CA").pem();
        let issuer = Issuer::from_ca_cert_pem(&pem, key).expect("issuer");
        TestCa { pem, issuer }
    }

    /// A certificate as `params` say, for a new key, signed by this CA.
    pub fn sign(&self, params: CertificateParams) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("signed");
        (certificate, key)
    }
}
