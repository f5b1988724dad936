//! A real Slurm: `runner slurm` submits a 4-point sweep as one job array on the local cluster
//! started by `scripts/slurm-local.sh start` (which `.ci/run` does when it runs as root). The
//! tests need that Slurm, so `cargo test` reports them as ignored; `.ci/run` runs them with
//! `--ignored` once its Slurm is up (and they fail, saying why, when there is none).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn slurm_ready() -> Result<(), String> {
    let out = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%T"])
        .output()
        .map_err(|e| format!("no sinfo ({e})"))?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success()
        || !(state.starts_with("idle") || state.starts_with("mix") || state.starts_with("alloc"))
    {
        return Err(format!("no usable node (sinfo: {state:?})"));
    }
    Ok(())
}

/// Wait until Slurm lists none of the jobs `ids` (comma-separated), at most 300 s.
fn wait_for(ids: &str) {
    let t0 = Instant::now();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", ids])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&q.stdout).trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "jobs {ids} did not finish in 300 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs a running Slurm: `scripts/slurm-local.sh start` (root), then `cargo test --release --test slurm -- --ignored`; .ci/run does both"]
fn slurm_job_array_runs_every_point() {
    if let Err(why) = slurm_ready() {
        panic!("{why}; start one with `scripts/slurm-local.sh start` (root)");
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("sl.toml"),
        "name = \"sl\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\n\
         val_fraction = 0.5\n[train]\nepochs = 2\n[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n\
         results_dir = \"r e\\\"s $(touch pwned) `touch pwned2` x\"\n\
         [sweep]\n\"train.lr\" = [0.01, 0.001]\n\"train.batch_size\" = [16, 32]\n",
    )
    .unwrap();
    // the results folder's name holds a quote, spaces, `$( )` and backticks: sbatch and bash
    // must take it as a name (the #SBATCH --output line and the log files sit under it)
    let res = d.path().join("r e\"s $(touch pwned) `touch pwned2` x");
    let out = run_in(
        d.path(),
        &[
            "slurm",
            "sl.toml",
            "--max-parallel",
            "4",
            "--sbatch-arg=--comment=a \"b\" c",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        job.chars().all(|c| c.is_ascii_digit()) && !job.is_empty(),
        "job id {job:?}"
    );
    wait_for(&job);
    let runs: Vec<_> = std::fs::read_dir(res.join("sl"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    let logs: Vec<String> = std::fs::read_dir(res.join("sl/slurm"))
        .map(|r| {
            r.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        runs.len(),
        4,
        "finished runs: {runs:?}; task logs: {logs:?}"
    );
    assert!(!d.path().join("pwned").exists() && !d.path().join("pwned2").exists());
    let outs = std::fs::read_dir(res.join("sl/slurm"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "out"))
        })
        .count();
    assert_eq!(outs, 4, "a log per task under the quoted --output path");
    let summary = std::fs::read_to_string(res.join("sl/summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 5, "{summary}");
    let out = run_in(d.path(), &["status", "sl.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("done"))
            .count(),
        4
    );
}

#[test]
#[ignore = "needs a running Slurm: `scripts/slurm-local.sh start` (root), then `cargo test --release --test slurm -- --ignored`; .ci/run does both"]
fn slurm_extract_shards_then_the_sweep() {
    if let Err(why) = slurm_ready() {
        panic!("{why}; start one with `scripts/slurm-local.sh start` (root)");
    }
    let d = tempfile::tempdir().unwrap();
    let body = "seed = 2\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 3\n\
         val_fraction = 0.5\n[train]\nepochs = 2\n[run]\ndevice = \"cpu\"\nextract_batch = 16\n";
    std::fs::write(
        d.path().join("sh.toml"),
        format!("name = \"sh\"\n{body}cache_dir = \"cache4\"\nresults_dir = \"res\"\n[sweep]\n\"train.lr\" = [0.01, 0.001]\n"),
    )
    .unwrap();
    std::fs::write(
        d.path().join("one.toml"),
        format!("name = \"one\"\n{body}cache_dir = \"cache1\"\nresults_dir = \"res\"\n"),
    )
    .unwrap();
    let out = run_in(d.path(), &["slurm", "sh.toml", "--extract-shards", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !job.is_empty() && job.chars().all(|c| c.is_ascii_digit()),
        "job id {job:?}"
    );
    let note = String::from_utf8_lossy(&out.stderr).to_string();
    let extract_job: String = note
        .split("job array ")
        .nth(1)
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert!(!extract_job.is_empty(), "{note}");
    // the one-process features, meanwhile
    let one = run_in(d.path(), &["-q", "one.toml"]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    wait_for(&format!("{extract_job},{job}"));
    let logs: Vec<String> = std::fs::read_dir(d.path().join("res/sh/slurm"))
        .map(|r| {
            r.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let shards = cache_files(&d.path().join("cache4"), ".shard-");
    assert_eq!(shards.len(), 4, "{shards:?}; logs: {logs:?}");
    let whole = cache_files(&d.path().join("cache1"), "");
    assert_eq!(whole.len(), 1);
    assert!(
        feature_bytes(&whole) == feature_bytes(&shards),
        "shards from 4 tasks hold the one-process features, bit for bit"
    );
    // the sweep ran after the extraction, from the shards
    let runs: Vec<serde_json::Value> = std::fs::read_dir(d.path().join("res/sh"))
        .unwrap()
        .map(|e| e.unwrap().path().join("summary.json"))
        .filter(|p| p.is_file())
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "logs: {logs:?}");
    assert!(runs.iter().all(|s| s["cache_hit"] == true), "{runs:?}");
}
