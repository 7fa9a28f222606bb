//! The part of Lily's config.toml the stand-in reads: the API and libp2p listen addresses
//! and the `[Storage.Postgresql.<name>]` entries. Missing tables and keys take defaults;
//! unknown ones (`ConnMgrLow`, `PoolSize`, `[Storage.File]`...) are ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::Error;

#[derive(Debug, Default, Deserialize)]
pub struct Config {
    #[serde(rename = "API", default)]
    pub api: Api,
    #[serde(rename = "Libp2p", default)]
    pub libp2p: Libp2p,
    #[serde(rename = "Storage", default)]
    pub storage: Storage,
}

#[derive(Debug, Deserialize)]
pub struct Api {
    #[serde(rename = "ListenAddress", default = "default_api")]
    pub listen_address: String,
}

fn default_api() -> String {
    "/ip4/0.0.0.0/tcp/1234/http".into()
}

impl Default for Api {
    fn default() -> Self {
        Api { listen_address: default_api() }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Libp2p {
    #[serde(rename = "ListenAddresses", default)]
    pub listen_addresses: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Storage {
    #[serde(rename = "Postgresql", default)]
    pub postgresql: BTreeMap<String, PgStorage>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PgStorage {
    #[serde(rename = "URLEnv")]
    pub url_env: Option<String>,
    #[serde(rename = "URL")]
    pub url: Option<String>,
    #[serde(rename = "SchemaName")]
    pub schema_name: Option<String>,
    #[serde(rename = "ApplicationName")]
    pub application_name: Option<String>,
}

impl PgStorage {
    /// The database URL: from the variable `URLEnv` names, else `URL`.
    pub fn url(&self, table: &str) -> Result<String, Error> {
        match (&self.url_env, &self.url) {
            (Some(var), _) => {
                std::env::var(var).ok().filter(|v| !v.is_empty()).ok_or_else(|| Error::MissingUrl { table: table.into(), var: var.clone() })
            }
            (None, Some(url)) if !url.is_empty() => Ok(url.clone()),
            (None, _) => Err(Error::NoUrl { table: table.into() }),
        }
    }

    /// `SchemaName`, Lily's default `public`.
    pub fn schema_name(&self) -> &str {
        self.schema_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("public")
    }

    /// `ApplicationName`, default `lily`.
    pub fn application_name(&self) -> &str {
        self.application_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("lily")
    }
}

impl Config {
    /// Reads `path`, else `$LILY_CONFIG`, else `$LILY_REPO/config.toml` (`~/.lily` without
    /// it). A missing file gives the defaults. Returns the config and a line saying where
    /// it came from.
    pub fn load(path: Option<&str>) -> Result<(Config, String), Error> {
        let path = match (path, std::env::var_os("LILY_CONFIG")) {
            (Some(p), _) => PathBuf::from(p),
            (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let repo = std::env::var_os("LILY_REPO")
                    .filter(|r| !r.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".lily"));
                repo.join("config.toml")
            }
        };
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Config::parse(&text).map_err(|msg| Error::Config { path: shown.clone(), msg })?, shown)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Config::default(), format!("{shown} not found, defaults"))),
            Err(e) => Err(Error::Config { path: shown, msg: e.to_string() }),
        }
    }

    /// Parses config.toml. The error gives the line and toml's message, never the line's
    /// text (a `URL` key may hold a password).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| match e.span() {
            Some(span) => format!("line {}: {}", text[..span.start].matches('\n').count() + 1, e.message()),
            None => e.message().to_string(),
        })
    }
}

/// The TCP socket of a multiaddr `/ip4/A/tcp/P` or `/ip6/A/tcp/P`, optionally ending in
/// `/http` (Lily's API address).
pub fn tcp_socket(multiaddr: &str) -> Result<SocketAddr, Error> {
    let bad = |why: &str| Error::Failed(format!("multiaddr {multiaddr:?}: {why} (expected /ip4/A/tcp/P[/http])"));
    let parts: Vec<&str> = multiaddr.split('/').collect();
    let (ip, port, rest) = match parts.as_slice() {
        ["", proto @ ("ip4" | "ip6"), ip, "tcp", port, rest @ ..] => {
            let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
            if ip.is_ipv4() != (*proto == "ip4") {
                return Err(bad(&format!("not an {proto} address")));
            }
            (ip, port.parse::<u16>().map_err(|_| bad("not a TCP port"))?, rest)
        }
        _ => return Err(bad("unsupported")),
    };
    match rest {
        [] | ["http"] => Ok(SocketAddr::new(ip, port)),
        _ => Err(bad("unsupported protocol after tcp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART: &str = r#"
[API]
  ListenAddress = "/ip4/0.0.0.0/tcp/1234/http"
[Libp2p]
  ListenAddresses = ["/ip4/0.0.0.0/tcp/1347"]
  ConnMgrLow = 400
  ConnMgrHigh = 500
  ConnMgrGrace = "5m0s"
[Storage]
  [Storage.Postgresql]
    [Storage.Postgresql.db]
      SchemaName = "lily"
      URLEnv = "LILY_STORAGE_POSTGRESQL_DB_URL"
      ApplicationName = "lily"
      PoolSize = 20
      AllowUpsert = false
"#;

    #[test]
    fn the_charts_config() {
        let c = Config::parse(CHART).unwrap();
        assert_eq!(c.api.listen_address, "/ip4/0.0.0.0/tcp/1234/http");
        assert_eq!(c.libp2p.listen_addresses, ["/ip4/0.0.0.0/tcp/1347"]);
        assert_eq!(c.storage.postgresql.len(), 1);
        let db = &c.storage.postgresql["db"];
        assert_eq!(db.url_env.as_deref(), Some("LILY_STORAGE_POSTGRESQL_DB_URL"));
        assert_eq!(db.schema_name(), "lily");
        assert_eq!(db.application_name(), "lily");
    }

    #[test]
    fn missing_tables_take_defaults() {
        for text in ["", "[Libp2p]\n", "[Storage]\n", "[Storage.File]\n  [Storage.File.csv]\n    Path = \"/tmp\"\n"] {
            let c = Config::parse(text).unwrap();
            assert_eq!(c.api.listen_address, "/ip4/0.0.0.0/tcp/1234/http", "{text:?}");
            assert!(c.libp2p.listen_addresses.is_empty(), "{text:?}");
            assert!(c.storage.postgresql.is_empty(), "{text:?}");
        }
        let c = Config::parse("[Storage.Postgresql.x]\nURL = \"postgres://h/db\"\n").unwrap();
        let x = &c.storage.postgresql["x"];
        assert_eq!((x.schema_name(), x.application_name()), ("public", "lily"));
        assert_eq!(x.url("x").unwrap(), "postgres://h/db");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let c = Config::parse("Top = 1\n[API]\nListenAddress = \"/ip4/127.0.0.1/tcp/9/http\"\nTimeout = \"30s\"\n[Chainstore]\nEnableSplitstore = true\n[Storage.Postgresql.a]\nSchemaName = \"s\"\nExtra = [1, 2]\n").unwrap();
        assert_eq!(c.api.listen_address, "/ip4/127.0.0.1/tcp/9/http");
        assert_eq!(c.storage.postgresql["a"].schema_name(), "s");
    }

    #[test]
    fn parse_errors_name_the_line_not_its_text() {
        let e = Config::parse("[API]\nListenAddress = 5\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = Config::parse("[Storage.Postgresql.a]\nURL = \"postgres://u:hunter2@h\n").unwrap_err();
        assert!(e.starts_with("line 2:") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn storage_urls() {
        let entry = |env: &str| PgStorage { url_env: Some(env.into()), ..Default::default() };
        let e = entry("LILY_STANDIN_TEST_SURELY_UNSET").url("db").unwrap_err();
        assert_eq!(
            e.to_string(),
            "[Storage.Postgresql.db]: environment variable LILY_STANDIN_TEST_SURELY_UNSET (named by its URLEnv) is not set or empty"
        );
        assert!(matches!(entry("PATH").url("db"), Ok(p) if !p.is_empty()));
        assert_eq!(PgStorage::default().url("t").unwrap_err().to_string(), "[Storage.Postgresql.t] sets neither URLEnv nor URL");
    }

    #[test]
    fn multiaddrs() {
        assert_eq!(tcp_socket("/ip4/0.0.0.0/tcp/1234/http").unwrap(), "0.0.0.0:1234".parse().unwrap());
        assert_eq!(tcp_socket("/ip4/127.0.0.1/tcp/1347").unwrap(), "127.0.0.1:1347".parse().unwrap());
        assert_eq!(tcp_socket("/ip6/::/tcp/0").unwrap(), "[::]:0".parse().unwrap());
        for bad in [
            "",
            "/ip4/0.0.0.0/udp/1",
            "/ip4/::/tcp/1",
            "/ip6/1.2.3.4/tcp/1",
            "/ip4/x/tcp/1",
            "/ip4/1.2.3.4/tcp/70000",
            "/ip4/1.2.3.4/tcp/1/ws",
            "/dns4/h/tcp/1",
            "ip4/1.2.3.4/tcp/1",
        ] {
            assert!(tcp_socket(bad).is_err(), "{bad:?}");
        }
    }
}
