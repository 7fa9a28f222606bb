//! The CI templates under `ci/templates/` parse as YAML and name only lily-e2e commands and
//! flags that exist (each checked against `lily-e2e ... --help`).

mod common;

/// Every string in a YAML document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn help(words: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e")).args(words).arg("--help").output().unwrap();
    assert!(out.status.success(), "`lily-e2e {} --help` failed: {}", words.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_ci_templates_parse_and_use_only_commands_and_flags_that_exist() {
    let dir = common::repo_root().join("ci/templates");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = lily_e2e::yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let mut all = Vec::new();
        strings(&doc, &mut all);
        for s in all {
            for (i, _) in s.match_indices("lily-e2e ") {
                // Only invocations: at a line's start or after a shell separator.
                let before = s[..i].trim_end();
                if !(before.is_empty() || before.ends_with(['\n', ';', '&', '|', '(']) || before.ends_with("$(")) {
                    continue;
                }
                let words: Vec<&str> = s[i + "lily-e2e ".len()..].split_whitespace().take_while(|w| !w.starts_with(')')).collect();
                let sub: Vec<&str> = words
                    .iter()
                    .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-'))
                    .copied()
                    .collect();
                assert!(!sub.is_empty(), "{}: `lily-e2e {}` names no command", path.display(), words.join(" "));
                let h = help(&sub);
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(h.contains(flag), "{}: `lily-e2e {}` has no flag {flag}", path.display(), sub.join(" "));
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} lily-e2e invocations found in ci/templates");
}
