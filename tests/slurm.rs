//! A real Slurm: `runner slurm` submits a 4-point sweep as one job array on the local cluster
//! started by `scripts/slurm-local.sh start` (which `.ci/run` does when it runs as root). Without
//! a running Slurm the test says why and passes without checking anything.

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

#[test]
fn slurm_job_array_runs_every_point() {
    if let Err(why) = slurm_ready() {
        eprintln!("SKIPPED slurm_job_array_runs_every_point: {why}; start one with `scripts/slurm-local.sh start` (root)");
        return;
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
    let t0 = Instant::now();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", &job])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&q.stdout).trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the job array did not finish in 300 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
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
