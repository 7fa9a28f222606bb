//! `lily-e2e bench`: cold start, teardown and peak memory of the local cluster; or, with
//! `--postgres`, start to ready of PostgreSQL providers.

use std::process::ExitCode;
use std::time::Instant;

use lily_e2e::cluster::{self, ClusterSpec};
use lily_e2e::reap::processes_of;
use lily_e2e::run::Run;

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Start to every node Ready and teardown of each provider, runs interleaved (run 1 of each,
/// then run 2, ...), so that both see the same machine. Peak RSS is the harness's child
/// processes' (the local control plane); kind's nodes are containers, not measured.
pub async fn cluster(runs: usize, spec: ClusterSpec, providers: &[Box<dyn cluster::ClusterProvider>]) -> anyhow::Result<ExitCode> {
    let mut times: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new(), Vec::new()); providers.len()];
    for i in 0..runs {
        for (provider, (start, stop, rss)) in providers.iter().zip(times.iter_mut()) {
            let run = Run::create(false)?;
            let t = Instant::now();
            let c = provider.start(&spec, &run).await?;
            let s = t.elapsed().as_secs_f64();
            // The sum of each control-plane process's peak RSS, measured just before teardown.
            let kib: u64 = processes_of(run.id()).into_iter().map(peak_rss_kib).sum();
            let t = Instant::now();
            c.teardown(cluster::Teardown::Fast).await?;
            let d = t.elapsed().as_secs_f64();
            let nodes = match provider.name() {
                "kind" => format!("1 + {} nodes", spec.nodes),
                _ => format!("{} nodes", spec.nodes),
            };
            let mem = if kib > 0 { format!(", peak RSS {:.0} MiB", kib as f64 / 1024.0) } else { String::new() };
            println!("{} run {}: start to {nodes} Ready {s:.2}s, teardown {d:.2}s{mem}", provider.name(), i + 1);
            start.push(s);
            stop.push(d);
            if kib > 0 {
                rss.push(kib as f64 / 1024.0);
            }
        }
    }
    for (provider, (start, stop, rss)) in providers.iter().zip(times) {
        for (name, v, unit) in [("start", start, "s"), ("teardown", stop, "s"), ("peak RSS", rss, " MiB")] {
            if v.is_empty() {
                continue;
            }
            let (min, med, max) = stats(v);
            println!("{:>5} {name:>9}: min {min:.2}{unit}  median {med:.2}{unit}  max {max:.2}{unit}", provider.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Start to ready (a TLS session accepted) and teardown of each PostgreSQL provider, runs
/// interleaved so that both see the same machine.
pub async fn postgres(runs: usize, providers: &[String]) -> anyhow::Result<ExitCode> {
    use lily_e2e::postgres::{self, PostgresSpec};
    let providers = providers.iter().map(|p| postgres::provider(p)).collect::<Result<Vec<_>, _>>()?;
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); providers.len()];
    for i in 0..runs {
        for (p, (start, stop)) in providers.iter().zip(times.iter_mut()) {
            let run = Run::create(false)?;
            let t = Instant::now();
            let pg = p.start(&PostgresSpec::default(), &run).await?;
            let s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            pg.teardown().await?;
            let d = t.elapsed().as_secs_f64();
            println!("run {} {}: start to ready {s:.2}s, teardown {d:.2}s", i + 1, p.name());
            start.push(s);
            stop.push(d);
        }
    }
    for (p, (start, stop)) in providers.iter().zip(times) {
        for (name, v) in [("start", start), ("teardown", stop)] {
            let (min, med, max) = stats(v);
            println!("{:>9} {name:>8}: min {min:.2}s  median {med:.2}s  max {max:.2}s", p.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}
