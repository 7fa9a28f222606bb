//! Command-line helpers: `--name=value` / `--name value` flags and Go-style durations.

use std::time::Duration;

use crate::Error;

/// The value of flag `name` (`--name=V`, `--name V`, or with one dash as Go's flag
/// package allows), if given. Quotes the shell left in place are not expected.
pub fn flag(args: &[String], name: &str) -> Result<Option<String>, Error> {
    for (i, a) in args.iter().enumerate() {
        let Some(rest) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else { continue };
        if let Some(v) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Ok(Some(v.to_string()));
        }
        if rest == name {
            return args.get(i + 1).map(|v| Some(v.clone())).ok_or_else(|| Error::Usage(format!("--{name} needs a value")));
        }
    }
    Ok(None)
}

/// A Go `time.Duration` string: `60s`, `5m`, `1m30s`, `1.5h`, `250ms`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (expected e.g. 60s, 5m, 1m30s)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let (mut rest, mut secs) = (s, 0f64);
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        secs += number * unit;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "60", "s", "5x", "-1s", "1m30", "1 s", "m5"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn flags() {
        let a = strings(&["--timeout=60s", "--bootstrap=false"]);
        assert_eq!(flag(&a, "timeout").unwrap().as_deref(), Some("60s"));
        assert_eq!(flag(&a, "time").unwrap(), None, "a prefix of a flag's name is not that flag");
        let a = strings(&["--schema", "lily", "-db=postgres://x"]);
        assert_eq!(flag(&a, "schema").unwrap().as_deref(), Some("lily"));
        assert_eq!(flag(&a, "db").unwrap().as_deref(), Some("postgres://x"));
        assert!(matches!(flag(&strings(&["--schema"]), "schema"), Err(Error::Usage(_))));
    }
}
