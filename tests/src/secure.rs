//! What a secured private NATS server needs: certificates (a CA, a server certificate for
//! `localhost`/`127.0.0.1`, a client certificate, and an unrelated CA to be wrong with),
//! identities (users with passwords, an nkey user, a token, or an operator with an account
//! and a user whose credentials file is signed here), the `nats-server` configuration file
//! that enforces them, and the client side of each: `ConnectOptions` for the harness and
//! `NATS_*` variables for the binaries.
//!
//! Everything is made in the test's own temp directory: no tool, no network, no fixture.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pki::{Ca, Usage};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::util::TempDir;

/// The user the harness itself connects as (readiness checks, stream reads).
pub const HARNESS_USER: &str = "harness";
/// The aggregator's user.
pub const AGG_USER: &str = "aggregator";
/// The publisher's user (passwords are per user, see [`Security::password`]).
pub const PUB_USER: &str = "publisher";

/// How clients authenticate to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `authorization { users }`: password users plus one nkey user.
    Users,
    /// `authorization { token }`.
    Token,
    /// Operator mode: operator, account and user JWTs; clients use credentials files.
    Operator,
}

/// A secured server's configuration and every file and secret its clients need.
#[derive(Debug)]
pub struct Security {
    pub mode: AuthMode,
    /// TLS on the client port; `verify` = clients must present a certificate.
    pub tls: Option<bool>,
    token: String,
    nkey_seed: String,
    dir: TempDir,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A signed NATS JWT (v2): `claims` plus `jti`, `iat`, `iss` = `issuer`'s public key.
fn jwt(issuer: &KeyPair, mut claims: Value) -> String {
    claims["jti"] = json!(uuid::Uuid::now_v7().simple().to_string().to_uppercase());
    claims["iat"] = json!(chrono::Utc::now().timestamp());
    claims["iss"] = json!(issuer.public_key());
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"));
    let signing_input = format!("{header}.{body}");
    let signature = issuer.sign(signing_input.as_bytes()).expect("sign JWT");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn account_claims(account: &KeyPair, name: &str, jetstream: bool) -> Value {
    let storage = if jetstream { -1 } else { 0 };
    json!({"sub": account.public_key(), "name": name, "nats": {
        "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                   "wildcards": true, "conn": -1, "leaf": -1,
                   "mem_storage": storage, "disk_storage": storage,
                   "streams": -1, "consumer": -1},
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account", "version": 2}})
}

fn creds_file(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

impl Security {
    /// Makes the certificates and identities for `mode`, TLS when `tls` is `Some(verify)`,
    /// and writes the server configuration ([`Security::config_path`]).
    pub fn new(mode: AuthMode, tls: Option<bool>) -> Security {
        let dir = TempDir::new("nats-sec");
        let sec = Security {
            mode,
            tls,
            token: format!("tok-{}", uuid::Uuid::now_v7().simple()),
            nkey_seed: KeyPair::new_user().seed().expect("seed"),
            dir,
        };
        sec.write_pki();
        let mut conf = sec.tls_block();
        conf.push_str(&match mode {
            AuthMode::Users => sec.users_block(),
            AuthMode::Token => format!("authorization {{ token: \"{}\" }}\n", sec.token),
            AuthMode::Operator => sec.operator_block(),
        });
        write(&sec.config_path(), &conf);
        write(&sec.path("nkey.seed"), &format!("{}\n", sec.nkey_seed));
        write(
            &sec.path("wrong.seed"),
            &KeyPair::new_user().seed().expect("seed"),
        );
        sec
    }

    fn write_pki(&self) {
        // Server and client certificates for localhost / 127.0.0.1, either usage.
        let both = [Usage::ServerAuth, Usage::ClientAuth];
        let names = ["localhost", "127.0.0.1"];
        let ca = Ca::new("it-ca");
        write(&self.path("ca.pem"), ca.pem());
        for name in ["server", "client"] {
            let (cert, key) = ca.issue(&format!("it-{name}"), &names, &both);
            write(&self.path(&format!("{name}.pem")), &cert);
            write(&self.path(&format!("{name}-key.pem")), &key);
        }
        // A CA that signed nothing here, and a client certificate it signed.
        let other = Ca::new("it-other-ca");
        write(&self.path("other-ca.pem"), other.pem());
        let (cert, key) = other.issue("it-stranger", &names, &both);
        write(&self.path("stranger.pem"), &cert);
        write(&self.path("stranger-key.pem"), &key);
    }

    fn tls_block(&self) -> String {
        let Some(verify) = self.tls else {
            return String::new();
        };
        // A generous handshake timeout: the test machine's cores are shared.
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 10\n}}\n",
            self.path("server.pem").display(),
            self.path("server-key.pem").display(),
            self.path("ca.pem").display()
        )
    }

    fn users_block(&self) -> String {
        let nkey_pub = KeyPair::from_seed(&self.nkey_seed)
            .expect("seed")
            .public_key();
        let users: Vec<String> = [HARNESS_USER, AGG_USER, PUB_USER]
            .iter()
            .map(|u| format!("    {{user: \"{u}\", password: \"{}\"}}", self.password(u)))
            .chain(std::iter::once(format!("    {{nkey: \"{nkey_pub}\"}}")))
            .collect();
        format!(
            "authorization {{\n  users: [\n{}\n  ]\n}}\n",
            users.join("\n")
        )
    }

    /// Operator, system account, account `IT` (JetStream on) and one user, whose credentials
    /// file is [`Security::creds_path`]; a second user signed by an unknown account is
    /// `wrong.creds`.
    fn operator_block(&self) -> String {
        let operator = KeyPair::new_operator();
        let op_jwt = jwt(
            &operator,
            json!({"sub": operator.public_key(), "name": "it-operator",
                   "nats": {"type": "operator", "version": 2}}),
        );
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let sys_jwt = jwt(&operator, account_claims(&system, "SYS", false));
        let acc_jwt = jwt(&operator, account_claims(&account, "IT", true));
        let user_creds = |signer: &KeyPair| {
            let user = KeyPair::new_user();
            let claims = json!({"sub": user.public_key(), "name": "it-user", "nats": {
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2}});
            creds_file(&jwt(signer, claims), &user.seed().expect("seed"))
        };
        write(&self.path("user.creds"), &user_creds(&account));
        write(
            &self.path("wrong.creds"),
            &user_creds(&KeyPair::new_account()),
        );
        format!(
            "operator: \"{op_jwt}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{sys_jwt}\"\n  {}: \"{acc_jwt}\"\n}}\n",
            system.public_key(),
            system.public_key(),
            account.public_key()
        )
    }

    /// A file in this configuration's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `nats-server -c` file.
    pub fn config_path(&self) -> PathBuf {
        self.path("nats.conf")
    }

    /// The password of `user` (users mode).
    pub fn password(&self, user: &str) -> String {
        format!("pw-{user}-{}", &self.token[4..12])
    }

    /// The token (token mode).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The credentials file of the account's user (operator mode).
    pub fn creds_path(&self) -> PathBuf {
        self.path("user.creds")
    }

    /// The URL scheme clients use: `tls` when the server speaks TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "tls"
        } else {
            "nats"
        }
    }

    /// `NATS_TLS_*` variables: the CA, and the client certificate when the server verifies.
    pub fn tls_env(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        let Some(verify) = self.tls else {
            return vars;
        };
        let mut add = |k: &str, file: &str| {
            vars.push((k.to_owned(), self.path(file).to_string_lossy().into_owned()))
        };
        add("NATS_TLS_CA", "ca.pem");
        if verify {
            add("NATS_TLS_CERT", "client.pem");
            add("NATS_TLS_KEY", "client-key.pem");
        }
        vars
    }

    /// Every `NATS_*` variable `user` needs (the user only matters in users mode).
    pub fn env_for(&self, user: &str) -> Vec<(String, String)> {
        let mut vars = self.tls_env();
        match self.mode {
            AuthMode::Users => {
                vars.push(("NATS_USER".into(), user.to_owned()));
                vars.push(("NATS_PASSWORD".into(), self.password(user)));
            }
            AuthMode::Token => vars.push(("NATS_TOKEN".into(), self.token.clone())),
            AuthMode::Operator => vars.push((
                "NATS_CREDS".into(),
                self.creds_path().to_string_lossy().into_owned(),
            )),
        }
        vars
    }

    /// Options for the harness's own connections (as [`HARNESS_USER`]).
    pub async fn client_options(&self) -> async_nats::ConnectOptions {
        let mut options = match self.mode {
            AuthMode::Users => async_nats::ConnectOptions::with_user_and_password(
                HARNESS_USER.into(),
                self.password(HARNESS_USER),
            ),
            AuthMode::Token => async_nats::ConnectOptions::with_token(self.token.clone()),
            AuthMode::Operator => {
                async_nats::ConnectOptions::with_credentials_file(self.creds_path())
                    .await
                    .expect("credentials file")
            }
        };
        if let Some(verify) = self.tls {
            options = options.add_root_certificates(self.path("ca.pem"));
            if verify {
                options = options
                    .add_client_certificate(self.path("client.pem"), self.path("client-key.pem"));
            }
        }
        options.connection_timeout(Duration::from_secs(5))
    }
}
