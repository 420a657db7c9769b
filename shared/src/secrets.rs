//! Secrets read from files: for each variable `X` a program lists, `X_FILE` names a file
//! holding its value, the way container orchestrators mount secrets (a password then never
//! appears in the environment, `docker inspect` or `/proc/<pid>/environ` of a parent).
//!
//! [`load`] runs before the command line is parsed and before the async runtime starts any
//! thread: it sets `X` from the file, so every later step (clap, validation) treats the value
//! exactly as if `X` had been set. Each program passes its own list of such variables.
//!
//! Also here: [`redact_url`], the one way a URL that may carry a password or token is shown
//! in a message or log, and [`SecretUrl`], a clap value parser that never echoes the value.

use std::ffi::OsString;

/// Sets each variable of `names` whose `<NAME>_FILE` twin is set from that file. Call it only
/// while the process has a single thread (changing the environment is not thread-safe).
pub fn load(names: &[&str]) -> Result<(), String> {
    for name in names {
        if let Some(value) = resolve(name, |var| std::env::var_os(var))? {
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

/// The value of `name` read from the file named by `<name>_FILE`, if that is set. `get` reads
/// a variable (the environment, or a table in tests). Both set, or a file that cannot be read
/// as text, is an error naming the variables.
pub fn resolve(
    name: &str,
    get: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, String> {
    let file_var = format!("{name}_FILE");
    let Some(path) = get(&file_var) else {
        return Ok(None);
    };
    if get(name).is_some() {
        return Err(format!(
            "{name} and {file_var} are both set; set only one of them"
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{file_var}: cannot read {} as text: {e}",
            std::path::Path::new(&path).display()
        )
    })?;
    // Files written by `echo` or an editor end with a newline that is no part of the secret.
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
}

/// A clap value parser for a URL that may hold a password: clap's own error would quote the
/// whole value, so the error is written here from the check's message alone (which must quote
/// the value only through [`redact_url`]).
#[derive(Clone)]
pub struct SecretUrl(pub fn(&str) -> Result<String, String>);

impl clap::builder::TypedValueParser for SecretUrl {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let name = arg.map(ToString::to_string).unwrap_or_default();
        let checked = match value.to_str() {
            Some(s) => (self.0)(s),
            None => Err("the value is not valid UTF-8".into()),
        };
        checked.map_err(|e| {
            let message = format!("invalid value for '{name}': {e}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        })
    }
}

/// `url` with the secret of each comma-separated `scheme://user:password@host` replaced by
/// `***` (`user:***@host`; a user part alone, which NATS reads as a token, becomes `***@host`),
/// fit for an error message or a log line.
pub fn redact_url(url: &str) -> String {
    let parts: Vec<String> = url
        .split(',')
        .map(|part| {
            let start = part.find("://").map_or(0, |i| i + 3);
            let authority_end = part[start..].find('/').map_or(part.len(), |i| start + i);
            let Some(at) = part[start..authority_end].rfind('@').map(|i| start + i) else {
                return part.to_owned();
            };
            match part[start..at].find(':') {
                Some(colon) => format!("{}:***{}", &part[..start + colon], &part[at..]),
                None => format!("{}***{}", &part[..start], &part[at..]),
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_file_gives_the_value_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("secrets-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let path = file.to_str().unwrap();
        assert_eq!(
            resolve("API_TOKEN", env(&[("API_TOKEN_FILE", path)])),
            Ok(Some("s3cret".into()))
        );
        let err = resolve(
            "API_TOKEN",
            env(&[("API_TOKEN_FILE", path), ("API_TOKEN", "x")]),
        )
        .unwrap_err();
        assert!(
            err.contains("API_TOKEN and API_TOKEN_FILE are both set"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_to_do_without_the_file_variable_and_a_missing_file_names_it() {
        assert_eq!(resolve("API_TOKEN", env(&[("API_TOKEN", "x")])), Ok(None));
        let err = resolve(
            "DATABASE_URL",
            env(&[("DATABASE_URL_FILE", "/nonexistent/db-url")]),
        )
        .unwrap_err();
        assert!(err.starts_with("DATABASE_URL_FILE: "), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(
            redact_url("nats://a:b@h1:4222, nats://h2:4222"),
            "nats://a:***@h1:4222, nats://h2:4222"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("nats://tok@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("tok@h"), "***@h");
    }
}
