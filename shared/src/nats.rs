//! How both programs authenticate to NATS and secure the connection: the options
//! (`NATS_CREDS`, `NATS_NKEY`, `NATS_TOKEN`, `NATS_USER` + `NATS_PASSWORD`, `NATS_TLS_CA`,
//! `NATS_TLS_CERT` + `NATS_TLS_KEY`, each also a `--kebab-case` flag), their checks, the
//! `async_nats::ConnectOptions` built from them, and the classification of a failed
//! connection as permanent (wrong credentials, untrusted certificate: retrying cannot help)
//! or transient (the server is not up yet).
//!
//! Written once so the publisher and the aggregator accept the same settings and refuse the
//! same mistakes with the same one-line messages, each naming the variable to change.

use crate::secrets::redact_url;
use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions, ServerAddr};
use std::fmt;
use std::path::{Path, PathBuf};

/// Authentication and TLS settings of a NATS connection (flattened into each program's
/// command line).
#[derive(Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS credentials file (user JWT and nkey seed, as written by `nsc`).
    #[arg(long, env = "NATS_CREDS", value_name = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// File holding a user nkey seed (`SU...`) for NATS nkey authentication.
    #[arg(long, env = "NATS_NKEY", value_name = "NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,

    /// NATS authentication token.
    #[arg(long, env = "NATS_TOKEN", value_name = "NATS_TOKEN", hide_env_values = true,
          value_parser = non_empty)]
    pub nats_token: Option<String>,

    /// NATS user name (with NATS_PASSWORD); `nats://user:password@host` also works.
    #[arg(long, env = "NATS_USER", value_name = "NATS_USER", value_parser = non_empty)]
    pub nats_user: Option<String>,

    /// NATS password (with NATS_USER).
    #[arg(long, env = "NATS_PASSWORD", value_name = "NATS_PASSWORD", hide_env_values = true,
          value_parser = non_empty)]
    pub nats_password: Option<String>,

    /// PEM file of the CA that signed the NATS server's certificate; setting it (or any
    /// NATS_TLS_* variable) requires TLS.
    #[arg(long, env = "NATS_TLS_CA", value_name = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with NATS_TLS_KEY).
    #[arg(long, env = "NATS_TLS_CERT", value_name = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,

    /// PEM private key of NATS_TLS_CERT.
    #[arg(long, env = "NATS_TLS_KEY", value_name = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
}

/// Secrets never appear in logs or `{:?}` output.
impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("NatsArgs")
            .field("nats_creds", &self.nats_creds)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_token", &hidden(&self.nats_token))
            .field("nats_user", &self.nats_user)
            .field("nats_password", &hidden(&self.nats_password))
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .finish()
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("is empty; unset the variable instead".into());
    }
    Ok(s.to_owned())
}

/// How the connection authenticates, as the variables that say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Creds,
    Nkey,
    Token,
    UserPassword,
    /// `nats://user:password@host` (or `nats://token@host`) in NATS_URL.
    Url,
}

impl Auth {
    /// The variables to check when the server refuses these credentials.
    fn variables(self) -> &'static str {
        match self {
            Auth::None => "NATS_CREDS, NATS_NKEY, NATS_TOKEN or NATS_USER/NATS_PASSWORD",
            Auth::Creds => "NATS_CREDS",
            Auth::Nkey => "NATS_NKEY",
            Auth::Token => "NATS_TOKEN",
            Auth::UserPassword => "NATS_USER/NATS_PASSWORD",
            Auth::Url => "NATS_URL (its user:password@)",
        }
    }
}

/// User and password (or a token, as the user part alone) written into the URLs.
fn url_credentials(url: &str) -> Result<Option<(String, Option<String>)>, String> {
    let mut found: Option<(String, Option<String>)> = None;
    for server in crate::subject::nats_servers(url) {
        let addr: ServerAddr = server
            .parse()
            .map_err(|e| format!("NATS_URL: {} is not a NATS URL: {e}", redact_url(server)))?;
        let Some(user) = addr.username() else {
            continue;
        };
        let creds = (user.to_owned(), addr.password().map(str::to_owned));
        match &found {
            Some(f) if *f != creds => {
                return Err("NATS_URL: its servers carry different credentials".into())
            }
            _ => found = Some(creds),
        }
    }
    Ok(found)
}

/// One server URL with its `user:password@` replaced by `userinfo@`, or dropped.
fn with_userinfo(server: &str, userinfo: Option<&str>) -> String {
    let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let userinfo = match (rest.contains('@'), userinfo) {
        (true, Some(u)) => format!("{u}@"),
        _ => String::new(),
    };
    if scheme.is_empty() {
        format!("{userinfo}{host}")
    } else {
        format!("{scheme}://{userinfo}{host}")
    }
}

/// Reads a file named by `var`, naming the variable when it cannot.
fn read(var: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))
}

/// Reads a PEM file and checks it holds a `BEGIN <what>` block.
fn read_pem(var: &str, path: &Path, what: &str) -> Result<(), String> {
    let text = read(var, path)?;
    if !text.contains("-----BEGIN ") || !text.contains(what) {
        return Err(format!("{var}: {} holds no PEM {what}", path.display()));
    }
    Ok(())
}

impl NatsArgs {
    /// The one way the connection authenticates; an error names the variables that clash.
    fn auth(&self, url: &str) -> Result<Auth, String> {
        match (&self.nats_user, &self.nats_password) {
            (Some(_), None) => return Err("NATS_USER is set without NATS_PASSWORD".into()),
            (None, Some(_)) => return Err("NATS_PASSWORD is set without NATS_USER".into()),
            _ => {}
        }
        let set = [
            (self.nats_creds.is_some(), Auth::Creds, "NATS_CREDS"),
            (self.nats_nkey.is_some(), Auth::Nkey, "NATS_NKEY"),
            (self.nats_token.is_some(), Auth::Token, "NATS_TOKEN"),
            (self.nats_user.is_some(), Auth::UserPassword, "NATS_USER"),
            (
                url_credentials(url)?.is_some(),
                Auth::Url,
                "NATS_URL (user:password@)",
            ),
        ];
        let chosen: Vec<_> = set.iter().filter(|(on, ..)| *on).collect();
        match chosen.as_slice() {
            [] => Ok(Auth::None),
            [(_, auth, _)] => Ok(*auth),
            many => Err(format!(
                "{} are all set; NATS takes one way to authenticate, unset all but one",
                many.iter()
                    .map(|(.., v)| *v)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    /// Whether TLS is asked for (a `NATS_TLS_*` variable or a `tls://` URL).
    fn wants_tls(&self, url: &str) -> bool {
        self.nats_tls_ca.is_some()
            || self.nats_tls_cert.is_some()
            || crate::subject::nats_servers(url)
                .iter()
                .any(|s| s.starts_with("tls://"))
    }

    /// Checks what no single value can: clashing ways to authenticate, half a pair, files
    /// that cannot be read or do not hold what they should. One line naming the variable.
    pub fn check(&self, url: &str) -> Result<(), String> {
        self.auth(url)?;
        match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(_), None) => return Err("NATS_TLS_CERT is set without NATS_TLS_KEY".into()),
            (None, Some(_)) => return Err("NATS_TLS_KEY is set without NATS_TLS_CERT".into()),
            _ => {}
        }
        if let Some(path) = &self.nats_creds {
            ConnectOptions::with_credentials(&read("NATS_CREDS", path)?).map_err(|e| {
                format!(
                    "NATS_CREDS: {} is not a credentials file: {e}",
                    path.display()
                )
            })?;
        }
        if let Some(path) = &self.nats_nkey {
            let seed = read("NATS_NKEY", path)?;
            nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                format!(
                    "NATS_NKEY: {} does not hold an nkey seed: {e}",
                    path.display()
                )
            })?;
        }
        if let Some(path) = &self.nats_tls_ca {
            read_pem("NATS_TLS_CA", path, "CERTIFICATE")?;
        }
        if let Some(path) = &self.nats_tls_cert {
            read_pem("NATS_TLS_CERT", path, "CERTIFICATE")?;
        }
        if let Some(path) = &self.nats_tls_key {
            read_pem("NATS_TLS_KEY", path, "PRIVATE KEY")?;
        }
        Ok(())
    }

    /// The servers of `url` and the options to connect to them with (after [`Self::check`];
    /// the caller adds its name, timeouts and retry policy).
    pub fn connect_options(&self, url: &str) -> Result<(ConnectOptions, Vec<ServerAddr>), String> {
        self.check(url)?;
        // Without their user info, sent below as options: async-nats ignores it and would
        // show it wherever it prints a server address.
        let servers = crate::subject::nats_servers(url)
            .into_iter()
            .map(|u| with_userinfo(u, None))
            .map(|u| u.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                format!(
                    "NATS_URL: {} is not a list of NATS URLs: {e}",
                    redact_url(url)
                )
            })?;
        let mut options = match self.auth(url)? {
            Auth::None => ConnectOptions::new(),
            Auth::Creds => {
                let path = self.nats_creds.as_deref().unwrap_or(Path::new(""));
                ConnectOptions::with_credentials(&read("NATS_CREDS", path)?)
                    .map_err(|e| format!("NATS_CREDS: {e}"))?
            }
            Auth::Nkey => {
                let path = self.nats_nkey.as_deref().unwrap_or(Path::new(""));
                ConnectOptions::with_nkey(read("NATS_NKEY", path)?.trim().to_owned())
            }
            Auth::Token => ConnectOptions::with_token(self.nats_token.clone().unwrap_or_default()),
            Auth::UserPassword => ConnectOptions::with_user_and_password(
                self.nats_user.clone().unwrap_or_default(),
                self.nats_password.clone().unwrap_or_default(),
            ),
            // async-nats does not send the user info of a URL itself.
            Auth::Url => match url_credentials(url)? {
                Some((user, Some(pass))) => ConnectOptions::with_user_and_password(user, pass),
                Some((token, None)) => ConnectOptions::with_token(token),
                None => ConnectOptions::new(),
            },
        };
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        // Never fall back to plaintext when the operator asked for TLS.
        if self.wants_tls(url) {
            options = options.require_tls(true);
        }
        Ok((options, servers))
    }

    /// One connection attempt with these settings, `configure` adding the caller's name and
    /// timeouts. A failure is `Ok(reason)` when a later attempt may succeed, `Err(line)` when
    /// none will (see [`Self::classify`]).
    pub async fn connect(
        &self,
        url: &str,
        configure: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<async_nats::Client, Result<String, String>> {
        let (options, servers) = self.connect_options(url).map_err(Err)?;
        match configure(options).connect(servers).await {
            Ok(client) => Ok(client),
            Err(e) => Err(self.classify(url, &e)),
        }
    }

    /// Whether a failed connection attempt can succeed later (the server is not up yet, the
    /// network is down) or never will with these settings (`Err`: one line naming the
    /// variable to change).
    pub fn classify(&self, url: &str, err: &ConnectError) -> Result<String, String> {
        let auth = self.auth(url).unwrap_or(Auth::None);
        let refused = |what: &str| {
            let vars = auth.variables();
            let first = vars.split([',', '/', ' ']).next().unwrap_or(vars);
            Err(match auth {
                Auth::None => format!(
                    "NATS_URL: the NATS server at {} requires authentication ({what}); set {vars}",
                    redact_url(url)
                ),
                Auth::UserPassword => format!(
                    "NATS_PASSWORD: the NATS server refused NATS_USER/NATS_PASSWORD ({what})"
                ),
                _ => format!("{first}: the NATS server refused the credentials in {vars} ({what})"),
            })
        };
        match err.kind() {
            ConnectErrorKind::AuthorizationViolation => refused("authorization violation"),
            ConnectErrorKind::Authentication => refused(&err.to_string()),
            ConnectErrorKind::ServerParse => Err(format!("NATS_URL: {err}")),
            ConnectErrorKind::Tls => Err(format!(
                "{}: TLS set-up failed: {err}",
                self.tls_variables()
            )),
            _ => match tls_failure(err) {
                Some(TlsFailure::ServerNotTrusted(e)) => Err(format!(
                    "NATS_TLS_CA: the NATS server's certificate is not trusted ({e}); \
                     NATS_TLS_CA must name the CA that signed it"
                )),
                Some(TlsFailure::Refused(e)) => Err(format!(
                    "NATS_TLS_CERT: the NATS server refused the TLS handshake ({e}); check \
                     NATS_TLS_CERT/NATS_TLS_KEY (a client certificate its CA signed)"
                )),
                Some(TlsFailure::Other(e)) => Err(format!(
                    "{}: TLS handshake with the NATS server failed: {e}",
                    self.tls_variables()
                )),
                None => Ok(err.to_string()),
            },
        }
    }

    fn tls_variables(&self) -> &'static str {
        if self.nats_tls_cert.is_some() {
            "NATS_TLS_CA/NATS_TLS_CERT/NATS_TLS_KEY"
        } else {
            "NATS_TLS_CA"
        }
    }
}

/// What a TLS handshake failure was, from the rustls error wrapped in an io error (async-nats
/// reports handshake failures as `ConnectErrorKind::Io`).
enum TlsFailure {
    /// We do not trust the server's certificate.
    ServerNotTrusted(String),
    /// The server sent an alert: it refused our certificate (or its absence).
    Refused(String),
    Other(String),
}

fn tls_failure(err: &ConnectError) -> Option<TlsFailure> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(match r {
                rustls::Error::InvalidCertificate(_) => TlsFailure::ServerNotTrusted(r.to_string()),
                rustls::Error::AlertReceived(_) => TlsFailure::Refused(r.to_string()),
                _ => TlsFailure::Other(r.to_string()),
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    source = Some(r);
                    continue;
                }
            }
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn parse(args: &[&str]) -> NatsArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .nats
    }

    #[test]
    fn clashing_settings_name_the_variables() {
        let url = "nats://127.0.0.1:4222";
        let cases: [(&[&str], &str, &[&str]); 6] = [
            (&["--nats-user", "u"], url, &["NATS_USER", "NATS_PASSWORD"]),
            (
                &["--nats-password", "p"],
                url,
                &["NATS_PASSWORD", "NATS_USER"],
            ),
            (
                &[
                    "--nats-token",
                    "t",
                    "--nats-user",
                    "u",
                    "--nats-password",
                    "p",
                ],
                url,
                &["NATS_TOKEN", "NATS_USER"],
            ),
            (
                &["--nats-token", "t"],
                "nats://u:p@h:4222",
                &["NATS_TOKEN", "NATS_URL"],
            ),
            (
                &["--nats-tls-cert", "/c"],
                url,
                &["NATS_TLS_CERT", "NATS_TLS_KEY"],
            ),
            (&["--nats-nkey", "/nonexistent/seed"], url, &["NATS_NKEY"]),
        ];
        for (args, url, vars) in cases {
            let err = parse(args).check(url).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            for var in vars {
                assert!(err.contains(var), "{args:?}: {err} should name {var}");
            }
        }
        parse(&["--nats-user", "u", "--nats-password", "p"])
            .check(url)
            .unwrap();
        parse(&[]).check("nats://u:p@h:1,nats://u:p@h:2").unwrap();
        assert!(parse(&[]).check("nats://u:p@h:1,nats://v:p@h:2").is_err());
    }

    #[test]
    fn secrets_stay_hidden() {
        let args = parse(&["--nats-token", "s3cret"]);
        assert!(!format!("{args:?}").contains("s3cret"));
        assert_eq!(
            redact_url("nats://u:pw@a:1,tls://b:2,tok@c:3"),
            "nats://u:***@a:1,tls://b:2,***@c:3"
        );
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("NATS_TOKEN") && help.contains("NATS_TLS_KEY"),
            "{help}"
        );
    }
}
