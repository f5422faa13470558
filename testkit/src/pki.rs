//! A throwaway certificate authority for TLS tests: a CA and leaf certificates carrying
//! Ballast roles, written as PEM files the binaries read with `--tls-*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_tls::{ClientTls, PemMaterial, Role, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA whose files live in `dir`.
pub struct TestPki {
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestPki({})", self.name)
    }
}

impl TestPki {
    /// Creates a CA called `name` and writes `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("creating the PKI directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signing the CA");
        let pki = TestPki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer,
        };
        std::fs::write(pki.ca_path(), pki.issuer.pem()).expect("writing the CA");
        pki
    }

    /// The CA bundle file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issues a certificate for `subject` with `roles`, valid for loopback as a server too,
    /// and returns its PEM certificate and key.
    pub fn issue_pem(&self, subject: &str, roles: &[Role]) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, subject);
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        for role in roles {
            params.subject_alt_names.push(SanType::URI(
                role.uri().try_into().expect("role URIs are ASCII"),
            ));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a certificate (see [`TestPki::issue_pem`]) and writes it as
    /// `<dir>/<subject>.pem` and `<dir>/<subject>-key.pem`.
    pub fn issue(&self, subject: &str, roles: &[Role]) -> TlsFiles {
        let (cert, key) = self.issue_pem(subject, roles);
        let files = TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{subject}.pem")),
            key: self.dir.join(format!("{subject}-key.pem")),
        };
        std::fs::write(&files.cert, cert).expect("writing a certificate");
        std::fs::write(&files.key, key).expect("writing a key");
        files
    }

    /// A client presenting a fresh certificate with `roles`.
    pub fn client(&self, subject: &str, roles: &[Role]) -> Arc<ClientTls> {
        let (cert, key) = self.issue_pem(subject, roles);
        ClientTls::from_pem(&PemMaterial {
            ca: self.issuer.pem().into_bytes(),
            identity: Some((cert.into_bytes(), key.into_bytes())),
        })
        .expect("building a client TLS configuration")
    }

    /// A client that trusts this CA but presents no certificate.
    pub fn anonymous_client(&self) -> Arc<ClientTls> {
        ClientTls::from_pem(&PemMaterial {
            ca: self.issuer.pem().into_bytes(),
            identity: None,
        })
        .expect("building a client TLS configuration")
    }
}

/// `--tls-ca/--tls-cert/--tls-key` for `files`.
pub fn tls_flags(files: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        files.ca.display().to_string(),
        "--tls-cert".into(),
        files.cert.display().to_string(),
        "--tls-key".into(),
        files.key.display().to_string(),
    ]
}
