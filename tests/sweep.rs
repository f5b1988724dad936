//! Sweeps: grid expansion into run folders, one extraction for all points, resume after a kill,
//! parallel workers with the same numbers, shards, and the plan.

mod common;

use std::path::Path;

use common::*;

const SPEC: &str = "name = \"sw\"\nseed = 5\n[backbone]\nweights = \"random\"\n\
[dataset]\nkind = \"synthetic\"\nper_class = 3\nval_fraction = 0.34\n[train]\nepochs = 3\n\
[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n\
[sweep]\n\"train.lr\" = [0.01, 0.001]\n\"head.hidden\" = [[], [16]]\n";

fn finished(results: &Path) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<(String, serde_json::Value)> = std::fs::read_dir(results.join("sw"))
        .map(|r| r.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let t = std::fs::read_to_string(p.join("summary.json")).ok()?;
            Some((
                p.file_name().unwrap().to_string_lossy().to_string(),
                serde_json::from_str(&t).unwrap(),
            ))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn grid_sweep_resume_jobs_and_shards() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("sw.toml"), SPEC).unwrap();

    // the plan: 4 points with stable ids
    let out = run_in(d.path(), &["plan", "sw.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(plan.lines().count(), 4, "{plan}");
    assert!(
        plan.lines()
            .next()
            .unwrap()
            .contains("head.hidden=[] train.lr=0.01"),
        "{plan}"
    );
    assert_eq!(
        run_in(d.path(), &["plan", "sw.toml"]).stdout,
        out.stdout,
        "ids are stable"
    );

    // start, kill once the first point has finished, start again
    let mut child = runner()
        .current_dir(d.path())
        .args(["-q", "sw.toml", "--set", "run.results_dir=a"])
        .spawn()
        .unwrap();
    while finished(&d.path().join("a")).is_empty() {
        assert!(child.try_wait().unwrap().is_none() || !finished(&d.path().join("a")).is_empty());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = finished(&d.path().join("a"));
    assert!(
        !first.is_empty() && first.len() < 4,
        "killed after {} points",
        first.len()
    );
    let (id0, s0) = first[0].clone();
    let out = run_in(d.path(), &["-v", "sw.toml", "--set", "run.results_dir=a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("finished earlier, skipped"));
    let all = finished(&d.path().join("a"));
    assert_eq!(all.len(), 4);
    // the points run by one process read the cached features once and keep them
    assert_eq!(
        log.matches("features kept in memory from the previous point")
            .count(),
        4 - first.len() - 1,
        "{log}"
    );
    let again = &all.iter().find(|(k, _)| *k == id0).unwrap().1;
    assert_eq!(
        again["finished_at"], s0["finished_at"],
        "the finished point was not redone"
    );
    let plan_ids: Vec<String> = plan
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    let mut dir_ids: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
    dir_ids.sort();
    let mut sorted_plan = plan_ids.clone();
    sorted_plan.sort();
    assert_eq!(dir_ids, sorted_plan, "run folders are the planned ids");
    // one extraction for the whole sweep: exactly one point missed the cache
    let misses = all.iter().filter(|(_, s)| s["cache_hit"] == false).count();
    assert_eq!(misses, 1, "frozen features extracted once");
    assert_eq!(
        std::fs::read_dir(d.path().join("cache"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors"))
            .count(),
        1
    );
    let summary = std::fs::read_to_string(d.path().join("a/sw/summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 5, "header + 4 rows:\n{summary}");

    // --jobs 2 gives the same numbers as the sequential run
    let out = run_in(
        d.path(),
        &[
            "sweep",
            "sw.toml",
            "--jobs",
            "2",
            "--set",
            "run.results_dir=b",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let par = finished(&d.path().join("b"));
    assert_eq!(par.len(), 4);
    for ((ka, sa), (kb, sb)) in all.iter().zip(&par) {
        assert_eq!(ka, kb);
        assert_eq!(sa["best_val_acc"], sb["best_val_acc"], "{ka}");
        assert_eq!(sa["best_val_loss"], sb["best_val_loss"], "{ka}");
    }
    let summary = std::fs::read_to_string(d.path().join("b/sw/summary.csv")).unwrap();
    assert_eq!(
        summary.lines().count(),
        5,
        "concurrent appends keep one header and 4 rows"
    );

    // a shard runs only its points
    let out = run_in(
        d.path(),
        &[
            "sweep",
            "sw.toml",
            "--shard",
            "1/2",
            "--set",
            "run.results_dir=c",
        ],
    );
    assert!(out.status.success());
    let shard: Vec<String> = finished(&d.path().join("c"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want = vec![plan_ids[1].clone(), plan_ids[3].clone()];
    want.sort();
    assert_eq!(shard, want);

    // status sees what is done
    let out = run_in(
        d.path(),
        &["status", "sw.toml", "--set", "run.results_dir=c"],
    );
    let st = String::from_utf8_lossy(&out.stdout);
    assert_eq!(st.lines().filter(|l| l.contains("done")).count(), 2, "{st}");
    assert_eq!(
        st.lines().filter(|l| l.contains("missing")).count(),
        2,
        "{st}"
    );
}

#[test]
fn bad_sweeps_stop_before_running_anything() {
    let d = tempfile::tempdir().unwrap();
    let bad = SPEC.replace(
        "\"head.hidden\" = [[], [16]]",
        "\"head.hiden\" = [[], [16]]",
    );
    std::fs::write(d.path().join("sw.toml"), bad).unwrap();
    let out = run_in(d.path(), &["sw.toml"]);
    assert_clean_failure(&out, &["sweep point 0", "hiden", "did you mean `hidden`?"]);
    assert!(!d.path().join("results").exists(), "nothing ran");
}

#[test]
fn slurm_dry_run_writes_a_job_array_script() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("sw.toml"), SPEC).unwrap();
    let out = run_in(
        d.path(),
        &[
            "slurm",
            "sw.toml",
            "--dry-run",
            "--max-parallel",
            "2",
            "--partition",
            "gpu",
            "--time",
            "00:10:00",
            "--sbatch-arg=--mem=1G",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = std::fs::read_to_string(d.path().join("results/sw/slurm/sweep.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=00:10:00",
        "#SBATCH --mem=1G",
        "sweep",
        "--index \"$SLURM_ARRAY_TASK_ID\"",
    ] {
        assert!(script.contains(want), "{want} missing:\n{script}");
    }
}

#[test]
fn global_flags_may_come_before_the_subcommand() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("sw.toml"), SPEC).unwrap();
    for args in [
        &["-v", "plan", "sw.toml"][..],
        &["plan", "sw.toml", "-v"],
        &["--set", "train.epochs=2", "plan", "sw.toml"],
    ] {
        let out = run_in(d.path(), args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            4,
            "{args:?}"
        );
    }
}
