//! PostgreSQL connection URLs: `postgres://USER:PASS@HOST:PORT/DB?sslmode=MODE`.
//!
//! Building percent-encodes the user, password and database name (everything but
//! `A-Za-z0-9-._~`), as the operators' guide asks of whoever writes the Secret; parsing
//! decodes them, the way libpq and Go's `net/url` read such a URL. A [`DbUrl`] prints with
//! its password as `***`; [`DbUrl::expose`] is the only way to the full text.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use super::{Password, PostgresError};

/// What is percent-encoded in a URL's user, password and database: all but RFC 3986's
/// unreserved characters.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The default PostgreSQL port.
pub const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection in this mode must be encrypted.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = PostgresError;
    fn from_str(s: &str) -> Result<Self, PostgresError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PostgresError::BadSslMode { mode: other.to_string() }),
        })
    }
}

/// What kind of host a URL names; summaries keep this instead of the host (ports and
/// addresses change between runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKind {
    /// 127.0.0.0/8, ::1 or `localhost`.
    Loopback,
    /// Any other IP address.
    Ip,
    /// A DNS name (e.g. a Service's).
    DnsName,
}

impl HostKind {
    pub fn of(host: &str) -> HostKind {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() => HostKind::Loopback,
            Ok(_) => HostKind::Ip,
            Err(_) if bare.eq_ignore_ascii_case("localhost") || bare.to_ascii_lowercase().ends_with(".localhost") => HostKind::Loopback,
            Err(_) => HostKind::DnsName,
        }
    }
}

/// A parsed PostgreSQL URL. `Display` and `Debug` show the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub user: String,
    pub password: Option<Password>,
    /// An address or a name, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub database: String,
    pub sslmode: SslMode,
    /// Other query parameters, in order (e.g. `application_name`).
    pub params: Vec<(String, String)>,
}

impl DbUrl {
    pub fn new(user: &str, password: Option<Password>, host: &str, port: u16, database: &str, sslmode: SslMode) -> Self {
        DbUrl {
            user: user.to_string(),
            password,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            database: database.to_string(),
            sslmode,
            params: Vec::new(),
        }
    }

    /// A query parameter other than `sslmode`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn host_kind(&self) -> HostKind {
        HostKind::of(&self.host)
    }

    /// The full URL, password included (percent-encoded). For the Secret only.
    pub fn expose(&self) -> String {
        self.render(self.password.as_ref().map(|p| utf8_percent_encode(p.expose(), COMPONENT).to_string()))
    }

    /// The URL with the password as `***`.
    pub fn redacted(&self) -> String {
        self.render(self.password.as_ref().map(|_| "***".to_string()))
    }

    fn render(&self, password: Option<String>) -> String {
        let mut s = String::from("postgres://");
        s.push_str(&utf8_percent_encode(&self.user, COMPONENT).to_string());
        if let Some(p) = password {
            s.push(':');
            s.push_str(&p);
        }
        s.push('@');
        if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        s.push_str(&format!(":{}/", self.port));
        s.push_str(&utf8_percent_encode(&self.database, COMPONENT).to_string());
        s.push_str("?sslmode=");
        s.push_str(self.sslmode.as_str());
        for (k, v) in &self.params {
            s.push('&');
            s.push_str(&utf8_percent_encode(k, COMPONENT).to_string());
            s.push('=');
            s.push_str(&utf8_percent_encode(v, COMPONENT).to_string());
        }
        s
    }

    /// Parses a `postgres://` or `postgresql://` URL. Errors never quote the input (it may
    /// hold a password). A missing port is 5432, a missing database is the user's name and
    /// a missing `sslmode` is `prefer`, as with libpq.
    pub fn parse(text: &str) -> Result<DbUrl, PostgresError> {
        let bad = |why: &str| PostgresError::BadUrl { why: why.to_string() };
        let u = url::Url::parse(text.trim()).map_err(PostgresError::UrlSyntax)?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            return Err(bad(&format!("has scheme `{}`; expected postgres:// or postgresql://", u.scheme())));
        }
        let decode = |s: &str, what: &str| -> Result<String, PostgresError> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(&format!("has a {what} that is not utf-8 once percent-decoded")))
        };
        let user = decode(u.username(), "user")?;
        if user.is_empty() {
            return Err(bad("names no user (postgres://USER:PASS@HOST:PORT/DB)"));
        }
        let password = match u.password() {
            Some(p) => Some(Password::new(decode(p, "password")?)),
            None => None,
        };
        let host = u.host_str().unwrap_or("");
        if host.is_empty() {
            return Err(bad("names no host (postgres://USER:PASS@HOST:PORT/DB)"));
        }
        let host = decode(host, "host")?;
        let port = u.port().unwrap_or(DEFAULT_PORT);
        let mut database = decode(u.path().trim_start_matches('/'), "database")?;
        if database.contains('/') {
            return Err(bad("has a path with more than one segment; expected /DB"));
        }
        if database.is_empty() {
            database = user.clone();
        }
        let mut sslmode = SslMode::Prefer;
        let mut params = Vec::new();
        for (k, v) in u.query_pairs() {
            if k == "sslmode" {
                sslmode = v.parse()?;
            } else {
                params.push((k.into_owned(), v.into_owned()));
            }
        }
        let mut url = DbUrl::new(&user, password, &host, port, &database, sslmode);
        url.params = params;
        Ok(url)
    }
}

/// Whether `text` sets `sslmode` itself. Without it [`DbUrl::parse`] (like libpq) takes
/// `prefer`, which falls back to an unencrypted session when the server offers no TLS.
pub fn names_sslmode(text: &str) -> bool {
    url::Url::parse(text.trim()).is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "sslmode"))
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn url(password: &str) -> DbUrl {
        DbUrl::new("lily_user", Some(Password::new(password)), "127.0.0.1", 54321, "lily", SslMode::Require)
    }

    #[rstest]
    #[case::plain("abcXYZ09", "abcXYZ09")]
    #[case::at("a@b", "a%40b")]
    #[case::slash("a/b", "a%2Fb")]
    #[case::percent("100%", "100%25")]
    #[case::colon("a:b", "a%3Ab")]
    #[case::all_specials("@/%:", "%40%2F%25%3A")]
    #[case::query_and_fragment("a?b#c&d=e", "a%3Fb%23c%26d%3De")]
    #[case::space_and_plus("a b+c", "a%20b%2Bc")]
    #[case::unreserved_stay("a-b.c_d~e", "a-b.c_d~e")]
    #[case::already_encoded_looking("%41", "%2541")]
    #[case::unicode("pässwörd", "p%C3%A4ssw%C3%B6rd")]
    fn postgres_password_is_percent_encoded(#[case] password: &str, #[case] encoded: &str) {
        assert_eq!(url(password).expose(), format!("postgres://lily_user:{encoded}@127.0.0.1:54321/lily?sslmode=require"));
    }

    #[rstest]
    #[case("abcXYZ09")]
    #[case("a@b/c%d:e")]
    #[case("@@@///%%%:::")]
    #[case("%41%zz%")]
    #[case("a?b#c&d=e f+g")]
    #[case("'\"\\")]
    #[case("pässwörd")]
    fn postgres_url_round_trips(#[case] password: &str) {
        let u = url(password);
        let back = DbUrl::parse(&u.expose()).unwrap();
        assert_eq!(back, u);
        assert_eq!(back.password.as_ref().unwrap().expose(), password);
    }

    #[test]
    fn postgres_generated_passwords_round_trip() {
        for _ in 0..200 {
            let u = url(Password::generate().expose());
            assert_eq!(DbUrl::parse(&u.expose()).unwrap(), u);
        }
    }

    #[rstest]
    #[case::documented("postgres://u:p@db.example:5433/lily?sslmode=require", "u", Some("p"), "db.example", 5433, "lily", SslMode::Require)]
    #[case::postgresql_scheme("postgresql://u:p@10.0.0.5/lily", "u", Some("p"), "10.0.0.5", 5432, "lily", SslMode::Prefer)]
    #[case::no_password("postgres://u@h:1/d?sslmode=disable", "u", None, "h", 1, "d", SslMode::Disable)]
    #[case::default_database("postgres://u:p@h:1?sslmode=verify-full", "u", Some("p"), "h", 1, "u", SslMode::VerifyFull)]
    #[case::ipv6("postgres://u:p@[::1]:7/d?sslmode=verify-ca", "u", Some("p"), "::1", 7, "d", SslMode::VerifyCa)]
    #[case::encoded_user_and_db("postgres://us%40er:p@h:1/my%20db", "us@er", Some("p"), "h", 1, "my db", SslMode::Prefer)]
    #[case::unencoded_at_in_password("postgres://u:p@ss@h:1/d", "u", Some("p@ss"), "h", 1, "d", SslMode::Prefer)]
    fn postgres_url_parses(
        #[case] text: &str,
        #[case] user: &str,
        #[case] password: Option<&str>,
        #[case] host: &str,
        #[case] port: u16,
        #[case] database: &str,
        #[case] sslmode: SslMode,
    ) {
        let u = DbUrl::parse(text).unwrap();
        assert_eq!(u.user, user);
        assert_eq!(u.password.as_ref().map(|p| p.expose()), password);
        assert_eq!(u.host, host);
        assert_eq!(u.port, port);
        assert_eq!(u.database, database);
        assert_eq!(u.sslmode, sslmode);
    }

    #[test]
    fn postgres_url_keeps_other_parameters() {
        let u = DbUrl::parse("postgres://u:p@h:1/d?application_name=lily%20x&sslmode=require&connect_timeout=5").unwrap();
        assert_eq!(u.param("application_name"), Some("lily x"));
        assert_eq!(u.param("connect_timeout"), Some("5"));
        assert_eq!(u.sslmode, SslMode::Require);
        assert_eq!(DbUrl::parse(&u.expose()).unwrap(), u);
    }

    #[rstest]
    #[case::not_a_url("not a url", "cannot be parsed")]
    #[case::wrong_scheme("mysql://u:s3cret@h/d", "scheme `mysql`")]
    #[case::no_user("postgres://:s3cret@h/d", "no user")]
    #[case::no_host("postgres://u:s3cret@/d", "")]
    #[case::bad_sslmode("postgres://u:s3cret@h/d?sslmode=sometimes", "sslmode `sometimes`")]
    #[case::bad_port("postgres://u:s3cret@h:99999/d", "cannot be parsed")]
    #[case::two_segments("postgres://u:s3cret@h/d/e", "more than one segment")]
    #[case::bad_utf8("postgres://u:s3cret%FF@h/d", "not utf-8")]
    fn postgres_bad_urls_are_refused_without_quoting_them(#[case] text: &str, #[case] needle: &str) {
        let e = DbUrl::parse(text).unwrap_err();
        let all = format!("{e} {e:?} {:?}", std::error::Error::source(&e).map(|s| s.to_string()));
        assert!(all.contains(needle), "{all}");
        assert!(!all.contains("s3cret"), "{all}");
    }

    #[rstest]
    #[case::given("postgres://u:p@h:1/d?sslmode=require", true)]
    #[case::given_disable("postgres://u:p@h:1/d?application_name=x&sslmode=disable", true)]
    #[case::absent("postgres://u:p@h:1/d", false)]
    #[case::other_params_only("postgres://u:p@h:1/d?application_name=sslmode", false)]
    #[case::not_a_url("not a url", false)]
    fn postgres_sslmode_given_or_not(#[case] text: &str, #[case] given: bool) {
        assert_eq!(names_sslmode(text), given);
    }

    #[test]
    fn postgres_url_prints_redacted() {
        let u = url("a@b/c%d:e");
        assert_eq!(u.to_string(), "postgres://lily_user:***@127.0.0.1:54321/lily?sslmode=require");
        assert!(!format!("{u:?}").contains("a@b"));
        assert!(!format!("{u:?}").contains("a%40b"));
    }

    #[rstest]
    #[case("127.0.0.1", HostKind::Loopback)]
    #[case("127.3.2.1", HostKind::Loopback)]
    #[case("::1", HostKind::Loopback)]
    #[case("[::1]", HostKind::Loopback)]
    #[case("localhost", HostKind::Loopback)]
    #[case("10.0.0.5", HostKind::Ip)]
    #[case("fd00::5", HostKind::Ip)]
    #[case("postgres.lily.svc", HostKind::DnsName)]
    fn postgres_host_kinds(#[case] host: &str, #[case] kind: HostKind) {
        assert_eq!(HostKind::of(host), kind);
    }
}
