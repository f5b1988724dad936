//! Running the points of a sweep: selection (all, one index, a shard), resume (finished points
//! are skipped), parallel workers on one machine (child processes, each with its share of the
//! cores and its own device), and Slurm job arrays.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::cache;
use crate::error::{Error, Result};
use crate::experiment;
use crate::progress::Mode;
use crate::spec::sweep::{expand, Point};

/// Which points to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    All,
    Index(usize),
    /// every point whose index % n == i
    Shard(usize, usize),
}

/// A shard `I/N` (`--shard 0/4`): index I below count N; the one place such a shard is read.
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("expected I/N with I below N, e.g. --shard 0/4 (got {s:?})");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

impl Selection {
    pub fn parse_shard(s: &str) -> std::result::Result<Selection, String> {
        parse_shard(s).map(|(i, n)| Selection::Shard(i, n))
    }

    fn keeps(&self, index: usize) -> bool {
        match *self {
            Selection::All => true,
            Selection::Index(i) => index == i,
            Selection::Shard(i, n) => index % n == i,
        }
    }
}

pub struct Options {
    pub selection: Selection,
    pub force: bool,
    pub jobs: usize,
    /// One device per worker, cycled (`run.device` of each point run by that worker).
    pub devices: Vec<String>,
    /// `--set` overrides, passed on to workers.
    pub sets: Vec<String>,
    pub mode: Mode,
    /// With `jobs` > 1: extract the features first as `jobs` shard processes, one per worker
    /// (and device), before the points start.
    pub extract_shards: bool,
}

/// What happened to each point.
#[derive(Debug, Default)]
pub struct Report {
    pub ran: Vec<usize>,
    pub skipped: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    /// Points another process was running at the time (left to it).
    pub busy: Vec<usize>,
}

/// Run the selected points of a spec (a spec without `[sweep]` is one point).
pub fn run(path: &Path, o: &Options) -> Result<Report> {
    let points = expand(path, &o.sets)?;
    if let Selection::Index(i) = o.selection {
        if i >= points.len() {
            return Err(Error::Spec(format!(
                "{}: there is no point {i} (the sweep has {})",
                path.display(),
                points.len()
            )));
        }
    }
    let mut report = Report::default();
    let mut todo: Vec<&Point> = Vec::new();
    for p in points.iter().filter(|p| o.selection.keeps(p.index)) {
        if !o.force && experiment::is_finished(&p.spec) {
            tracing::info!("point {} ({}) is finished; skipping", p.index, p.describe());
            if o.mode != Mode::Quiet {
                crate::note!(
                    "point {}: finished earlier, skipped ({})",
                    p.index,
                    experiment::run_id(&p.spec)
                );
            }
            report.skipped.push(p.index);
        } else {
            todo.push(p);
        }
    }
    if !(o.jobs > 1 && o.extract_shards) {
        shared_passes(&todo, o)?;
    }
    if o.jobs <= 1 || todo.len() <= 1 {
        // The points share their frozen features: read (and checked) once, then kept.
        cache::keep_last_in_memory(todo.len() > 1);
        let _forget = Forget;
        for p in todo {
            let mut spec = p.spec.clone();
            if let Some(d) = o.devices.first() {
                spec.device = crate::spec::parse_device(d).map_err(Error::Device)?;
            }
            crate::interrupt::check()?;
            let out = match experiment::run_point(&spec, o.mode, !o.force) {
                Ok(Some(out)) => out,
                Ok(None) => {
                    report.skipped.push(p.index);
                    continue;
                }
                Err(Error::Busy(msg)) => {
                    if o.mode != Mode::Quiet {
                        crate::note!("point {}: skipped; {msg}", p.index);
                    }
                    report.busy.push(p.index);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if o.mode != Mode::Quiet {
                crate::note!(
                    "point {} ({}): best val acc {:.4}; {}",
                    p.index,
                    p.describe(),
                    out.best_val_acc,
                    out.dir.display()
                );
            }
            report.ran.push(p.index);
        }
        return Ok(report);
    }
    run_parallel(path, o, &todo, &mut report)?;
    Ok(report)
}

/// Points (of one sweep, or of several files run together) that read the same backbone and
/// data at different cut points: their features are
/// computed first, in one pass per dataset (`passes::prepare`); the points then find them
/// stored. Where that fails for another reason than Ctrl-C, each point extracts its own (and
/// reports what went wrong for it).
pub fn shared_passes(todo: &[&Point], o: &Options) -> Result<()> {
    let mut specs: Vec<crate::spec::Spec> = todo
        .iter()
        .filter(|p| o.force || !experiment::is_finished(&p.spec))
        .map(|p| p.spec.clone())
        .collect();
    if let Some(d) = o.devices.first() {
        let device = crate::spec::parse_device(d).map_err(Error::Device)?;
        specs.iter_mut().for_each(|s| s.device = device);
    }
    let refs: Vec<&crate::spec::Spec> = specs.iter().collect();
    match crate::passes::prepare(&refs, o.mode) {
        Ok(0) => Ok(()),
        Ok(n) => {
            if o.mode != Mode::Quiet {
                crate::note!("computed {n} feature sets in shared passes (one per dataset)");
            }
            Ok(())
        }
        Err(Error::Interrupted) => Err(Error::Interrupted),
        Err(e) => {
            tracing::warn!("shared extraction passes not made ({e}); each point extracts its own");
            Ok(())
        }
    }
}

/// Drops the features an in-process sweep kept, however it ends.
struct Forget;

impl Drop for Forget {
    fn drop(&mut self) {
        cache::keep_last_in_memory(false);
    }
}

/// `jobs` worker processes (`runner sweep SPEC --index I`), each with cores/jobs threads.
fn run_parallel(path: &Path, o: &Options, todo: &[&Point], report: &mut Report) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Other(format!("cannot find the runner executable: {e}")))?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = (cores / o.jobs).max(1);
    if o.extract_shards {
        extract_in_shards(&exe, path, o, threads)?;
    }
    let mut queue: std::collections::VecDeque<&Point> = todo.iter().copied().collect();
    let mut running: Vec<(usize, usize, Child)> = Vec::new(); // (slot, point, child)
    let mut free: Vec<usize> = (0..o.jobs).rev().collect();
    while !queue.is_empty() || !running.is_empty() {
        if crate::interrupt::requested() {
            // Ctrl-C reached the workers too (same process group): start nothing new, and
            // wait for the running ones to write their epoch row and stop.
            queue.clear();
        }
        while let (Some(slot), Some(p)) = (free.last().copied(), queue.front().copied()) {
            free.pop();
            queue.pop_front();
            let mut cmd = Command::new(&exe);
            cmd.arg("sweep")
                .arg(path)
                .arg("--index")
                .arg(p.index.to_string())
                .arg("--force")
                .arg("-q");
            for s in &o.sets {
                cmd.arg("--set").arg(s);
            }
            if !o.devices.is_empty() {
                cmd.arg("--set")
                    .arg(format!("run.device={}", o.devices[slot % o.devices.len()]));
            }
            cmd.env("RAYON_NUM_THREADS", threads.to_string())
                .env("CANDLE_NUM_THREADS", threads.to_string());
            let child = cmd
                .spawn()
                .map_err(|e| Error::Other(format!("cannot start a worker: {e}")))?;
            if o.mode != Mode::Quiet {
                crate::note!(
                    "point {} ({}): started on worker {slot}",
                    p.index,
                    p.describe()
                );
            }
            running.push((slot, p.index, child));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut k = 0;
        while k < running.len() {
            match running[k].2.try_wait() {
                Ok(Some(status)) => {
                    let (slot, index, _) = running.remove(k);
                    free.push(slot);
                    if status.success() {
                        report.ran.push(index);
                        if o.mode != Mode::Quiet {
                            crate::note!("point {index}: done");
                        }
                    } else if status.code() == Some(75) {
                        report.busy.push(index);
                    } else if status.code() == Some(130) && crate::interrupt::requested() {
                        // interrupted with us; reported below
                    } else {
                        report
                            .failed
                            .push((index, format!("worker exited with {status}")));
                    }
                }
                Ok(None) => k += 1,
                Err(e) => return Err(Error::Other(format!("waiting for a worker: {e}"))),
            }
        }
    }
    crate::interrupt::check()
}

/// `runner extract-shard SPEC --shard K/jobs` for every worker slot K at once (worker K on
/// device K mod count); an error if any fails.
fn extract_in_shards(exe: &Path, path: &Path, o: &Options, threads: usize) -> Result<()> {
    let mut children = Vec::new();
    for k in 0..o.jobs {
        let mut cmd = Command::new(exe);
        cmd.arg("extract-shard")
            .arg(path)
            .arg("--shard")
            .arg(format!("{k}/{}", o.jobs))
            .arg("-q");
        for s in &o.sets {
            cmd.arg("--set").arg(s);
        }
        if !o.devices.is_empty() {
            cmd.arg("--set")
                .arg(format!("run.device={}", o.devices[k % o.devices.len()]));
        }
        cmd.env("RAYON_NUM_THREADS", threads.to_string())
            .env("CANDLE_NUM_THREADS", threads.to_string());
        children.push(
            cmd.spawn()
                .map_err(|e| Error::Other(format!("cannot start an extraction worker: {e}")))?,
        );
    }
    if o.mode != Mode::Quiet {
        crate::note!("extracting features as {} shards, one per worker", o.jobs);
    }
    let mut failed = Vec::new();
    for (k, mut c) in children.into_iter().enumerate() {
        let status = c
            .wait()
            .map_err(|e| Error::Other(format!("waiting for an extraction worker: {e}")))?;
        if !status.success() {
            failed.push(format!("shard {k}/{}: {status}", o.jobs));
        }
    }
    crate::interrupt::check()?;
    if !failed.is_empty() {
        return Err(Error::Other(format!(
            "sharded extraction failed ({}); its messages are above",
            failed.join(", ")
        )));
    }
    Ok(())
}

/// Print the points of a spec: index, run id, overrides.
pub fn plan(path: &Path, sets: &[String]) -> Result<Vec<(usize, String, String)>> {
    Ok(expand(path, sets)?
        .iter()
        .map(|p| (p.index, experiment::run_id(&p.spec), p.describe()))
        .collect())
}

/// State of each point from its run folder: done (with best val acc), started, or missing.
pub fn status(path: &Path, sets: &[String]) -> Result<Vec<(usize, String, String)>> {
    let points = expand(path, sets)?;
    let queued = squeue_names();
    Ok(points
        .iter()
        .map(|p| {
            let dir = experiment::run_dir(&p.spec);
            let id = experiment::run_id(&p.spec);
            let state = if experiment::is_finished(&p.spec) {
                let acc = std::fs::read_to_string(dir.join("summary.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["best_val_acc"].as_f64());
                format!("done (best val acc {:.4})", acc.unwrap_or(f64::NAN))
            } else if dir.join("epochs.csv").exists() || dir.join("config.toml").exists() {
                "running or interrupted".to_string()
            } else if queued.iter().any(|n| n.contains(&p.spec.name)) {
                "queued (squeue)".to_string()
            } else {
                "missing".to_string()
            };
            (p.index, id, state)
        })
        .collect())
}

fn squeue_names() -> Vec<String> {
    Command::new("squeue")
        .args(["-h", "-o", "%j"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `s` as one word of a POSIX shell: in single quotes, each `'` as `'\''`. Nothing in it runs:
/// `$( )`, backticks, `$VAR`, spaces and newlines stay literal.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One `#SBATCH` line carrying `arg` as one argument: sbatch reads these lines itself (no
/// shell), taking double quotes as grouping and a backslash as an escape, so an `arg` with any
/// character beyond letters, digits and `-_=.,:/%@+` goes in double quotes with `"` and `\`
/// escaped. A line break or NUL cannot be carried (it would end
/// the line, and the rest could read as another directive): refused.
pub fn sbatch_directive(arg: &str) -> Result<String> {
    if let Some(c) = arg.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(Error::Spec(format!(
            "{arg:?}: a #SBATCH line cannot carry the character {c:?}; rename the path or value without line breaks"
        )));
    }
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/%@+".contains(c));
    if plain {
        return Ok(format!("#SBATCH {arg}"));
    }
    let escaped = arg.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(format!("#SBATCH \"{escaped}\""))
}

pub struct SlurmOptions {
    pub partition: Option<String>,
    pub gpus_per_task: Option<usize>,
    pub time: Option<String>,
    pub max_parallel: Option<usize>,
    pub sbatch_args: Vec<String>,
    pub sets: Vec<String>,
    pub dry_run: bool,
    /// Extract the features first as an array of this many tasks (0: each point extracts what
    /// it needs, under the cache's lock).
    pub extract_shards: usize,
}

/// What `runner slurm` submitted: the scripts, and the job ids unless `--dry-run`.
pub struct Submitted {
    pub scripts: Vec<PathBuf>,
    /// The extraction array's job id (with `--extract-shards`).
    pub extract_job: Option<String>,
    pub sweep_job: Option<String>,
}

/// `runner extract-shard`: shard `index` of `count` of the features of every point of a sweep,
/// every cut point of one backbone and dataset in one pass (`passes`); points that share their
/// frozen part share their shards.
pub fn extract_shard(
    path: &Path,
    sets: &[String],
    index: usize,
    count: usize,
    mode: Mode,
) -> Result<usize> {
    let points = expand(path, sets)?;
    let specs: Vec<&crate::spec::Spec> = points.iter().map(|p| &p.spec).collect();
    crate::passes::extract_shard(&specs, index, count, mode)
}

/// The `#SBATCH` lines of an array of `tasks` tasks named `name`, logging under `dir`.
fn array_header(
    name: &str,
    tasks: usize,
    dir: &Path,
    cwd: &Path,
    o: &SlurmOptions,
) -> Result<Vec<String>> {
    let d = |v: String| sbatch_directive(&v);
    let mut lines = vec!["#!/bin/bash".to_string(), d(format!("--job-name={name}"))?];
    let array = match o.max_parallel {
        Some(k) => format!("0-{}%{k}", tasks - 1),
        None => format!("0-{}", tasks - 1),
    };
    lines.push(d(format!("--array={array}"))?);
    lines.push(d(format!("--output={}/%A_%a.out", dir.display()))?);
    lines.push(d(format!("--chdir={}", cwd.display()))?);
    if let Some(p) = &o.partition {
        lines.push(d(format!("--partition={p}"))?);
    }
    if let Some(g) = o.gpus_per_task {
        lines.push(d(format!("--gpus-per-task={g}"))?);
    }
    if let Some(t) = &o.time {
        lines.push(d(format!("--time={t}"))?);
    }
    for a in &o.sbatch_args {
        lines.push(d(a.clone())?);
    }
    Ok(lines)
}

/// Submit `script` with sbatch (extra arguments first); the job id.
fn sbatch(script: &Path, args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .map_err(|e| Error::Other(format!("cannot run sbatch ({e}); is Slurm installed here? --dry-run writes the script only")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "sbatch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string())
}

/// Write the sbatch job-array script for a sweep (one task per point) and, with
/// `extract_shards = N`, an extraction array of N tasks that the sweep's array waits for
/// (`--dependency=afterok`); submit them unless `dry_run`.
pub fn slurm(path: &Path, o: &SlurmOptions) -> Result<Submitted> {
    let points = expand(path, &o.sets)?;
    let base = &points[0].spec;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Other(format!("cannot find the runner executable: {e}")))?;
    let cwd =
        std::env::current_dir().map_err(|e| Error::Other(format!("no current directory: {e}")))?;
    let spec_abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let dir = cwd.join(&base.results_dir).join(&base.name).join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let q = shell_quote;
    let sets: String = o.sets.iter().map(|s| format!(" --set {}", q(s))).collect();
    let (exe_q, spec_q) = (q(&exe.to_string_lossy()), q(&spec_abs.to_string_lossy()));
    let mut scripts = Vec::new();
    if o.extract_shards > 0 {
        if base.cache_dir.is_none() {
            return Err(Error::Spec(
                "--extract-shards stores features in the feature cache: set run.cache = true"
                    .into(),
            ));
        }
        let n = o.extract_shards;
        let mut lines = array_header(&format!("{}-extract", base.name), n, &dir, &cwd, o)?;
        lines.push(String::new());
        lines.push(format!(
            "exec {exe_q} extract-shard {spec_q} --shard \"$SLURM_ARRAY_TASK_ID/{n}\" -q{sets}"
        ));
        let script = dir.join("extract.sbatch");
        crate::fsio::write_atomic(&script, (lines.join("\n") + "\n").as_bytes())?;
        scripts.push(script);
    }
    let mut lines = array_header(&base.name, points.len(), &dir, &cwd, o)?;
    lines.push(String::new());
    if o.extract_shards > 0 {
        lines.push(
            "# submitted with --dependency=afterok on extract.sbatch's array: the points read its shards"
                .to_string(),
        );
    }
    lines.push(format!(
        "exec {exe_q} sweep {spec_q} --index \"$SLURM_ARRAY_TASK_ID\" -q{sets}"
    ));
    let script = dir.join("sweep.sbatch");
    crate::fsio::write_atomic(&script, (lines.join("\n") + "\n").as_bytes())?;
    scripts.push(script.clone());
    if o.dry_run {
        return Ok(Submitted {
            scripts,
            extract_job: None,
            sweep_job: None,
        });
    }
    let extract_job = match o.extract_shards {
        0 => None,
        _ => Some(sbatch(&scripts[0], &[])?),
    };
    let dep: Vec<String> = extract_job
        .iter()
        .map(|id| format!("--dependency=afterok:{id}"))
        .collect();
    let sweep_job = Some(sbatch(&script, &dep)?);
    Ok(Submitted {
        scripts,
        extract_job,
        sweep_job,
    })
}
