//! The `runner` command line: parses arguments and calls the library, one small function per
//! subcommand (`cmd_*`); `run` is the dispatch table. No logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use runner::sweep::Selection;
use runner::{features, spec, weights, Error};

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Transfer learning of image classifiers from TOML experiment files",
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Experiment files to run (same as `runner run SPEC...`)
    #[arg(required = true)]
    specs: Vec<PathBuf>,
    /// Override a spec key, e.g. --set train.lr=0.01 (repeatable; wins over file and environment)
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    sets: Vec<String>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run experiment files: extract (or reuse) frozen features, train, write results
    Run {
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Run the points of a sweep (finished points are skipped unless --force)
    Sweep {
        spec: PathBuf,
        /// Run only point I
        #[arg(long, conflicts_with = "shard")]
        index: Option<usize>,
        /// Run every point whose index % N == I, e.g. --shard 0/4
        #[arg(long)]
        shard: Option<String>,
        /// Points run at once, each in its own process with cores/N threads
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Devices for the workers, e.g. cuda:0,cuda:1 (worker k uses device k mod count)
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Rerun finished points
        #[arg(long)]
        force: bool,
        /// With --jobs N: extract the features first as N shard processes, one per worker
        /// and device, then run the points from the stored shards
        #[arg(long)]
        extract_shards: bool,
    },
    /// Print the points of a sweep (index, run id, overrides) without running
    Plan { spec: PathBuf },
    /// Report which points are done, started or missing
    Status { spec: PathBuf },
    /// Submit a sweep to Slurm as a job array (one task per point)
    Slurm {
        spec: PathBuf,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        gpus_per_task: Option<usize>,
        /// Wall-clock limit per task, e.g. 01:00:00
        #[arg(long)]
        time: Option<String>,
        /// At most K tasks at once (--array=...%K)
        #[arg(long)]
        max_parallel: Option<usize>,
        /// Extra #SBATCH lines, e.g. --sbatch-arg=--mem=8G (repeatable)
        #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
        sbatch_args: Vec<String>,
        /// Write the script without submitting it
        #[arg(long)]
        dry_run: bool,
        /// Extract features first as an array of N tasks (one shard of the cache entry each);
        /// the sweep's array starts when all succeeded (--dependency=afterok)
        #[arg(long, default_value_t = 0)]
        extract_shards: usize,
    },
    /// Compute one shard of a spec's frozen features into the feature cache, e.g. --shard 0/4
    /// (what `runner slurm --extract-shards` runs in each task)
    #[command(hide = true)]
    ExtractShard {
        spec: PathBuf,
        #[arg(long)]
        shard: String,
    },
    /// Compare runs and epoch timings across devices and machines (folders, epochs.csv, summary.csv)
    Compare {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Grouping keys (device_name, experiment, backbone, freeze, batch_size, dtype, lr, hidden, optimizer)
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
        /// table | csv | markdown | json
        #[arg(long, default_value = "table")]
        format: String,
        /// Add a speed-up column relative to the first row whose keys contain this text
        #[arg(long)]
        baseline: Option<String>,
    },
    /// Classify images (files, folders, or train.p-style pickles) with a finished run's head
    Predict {
        run_dir: PathBuf,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Classes shown per image
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// table | csv | json
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Time extraction and head epochs on the spec's device without a full run (rows for compare)
    Bench {
        spec: PathBuf,
        /// Extraction batches timed (the first is warm-up)
        #[arg(long, default_value_t = 4)]
        batches: usize,
        /// Head epochs timed on the extracted features
        #[arg(long, default_value_t = 3)]
        epochs: usize,
    },
    /// Draw learning curves, epoch times per device, or accuracy vs epoch time (.svg or .png)
    Plot {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// curves | times | scatter
        #[arg(long, default_value = "curves")]
        kind: String,
        /// Grouping keys for `times` (as for compare)
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
    },
    /// One self-contained HTML page over runs from any number of machines (runs, timing by
    /// device, learning curves, swept settings, the best run's confusion matrix, machines)
    Report {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Grouping keys of the timing table (as for compare)
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
        /// Add a speed-up column relative to the first row whose keys contain this text
        #[arg(long)]
        baseline: Option<String>,
    },
    /// Validate experiment files without running them
    Check { specs: Vec<PathBuf> },
    /// List the devices this runner can use (CPU, and GPUs when built with CUDA)
    Devices,
    /// Write the frozen backbone's features of every sample to an .npz (features, labels)
    Extract {
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect or convert weight files
    #[command(subcommand)]
    Weights(WeightsCmd),
    /// Make datasets
    #[command(subcommand)]
    Data(DataCmd),
}

#[derive(Subcommand)]
enum DataCmd {
    /// Write the synthetic traffic-sign set in the train.p format (43 classes, 32x32)
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 40)]
        per_class: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also save a PNG grid with 8 images of every class
        #[arg(long)]
        preview: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WeightsCmd {
    /// List the tensors a weights file stores (name, shape, dtype), as stored
    Inspect { file: PathBuf },
    /// Convert to .safetensors in runner's (candle) layout, checked against an architecture
    Convert {
        input: PathBuf,
        output: PathBuf,
        #[arg(long, default_value = "alexnet")]
        arch: String,
        /// Convert the layers up to this one only (a convolutional base without fc layers:
        /// --until pool5)
        #[arg(long)]
        until: Option<String>,
    },
}

/// A line on standard output; a closed pipe ends the command quietly (`Error::ClosedOutput`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Error::stdout)?
    }};
}

/// Text as it is on standard output (see `out!`).
macro_rules! out_str {
    ($s:expr) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        o.write_all($s.as_bytes())
            .and_then(|_| o.flush())
            .map_err(Error::stdout)?
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    if let Err(e) = runner::interrupt::install() {
        tracing::warn!("{e}");
    }
    let r = run(cli);
    let profile = runner::profile::report();
    if !profile.is_empty() {
        runner::note!("{}", profile.trim_end());
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::ClosedOutput) => ExitCode::from(Error::ClosedOutput.exit_code()),
        Err(e) => {
            // one paragraph: nested messages may carry line breaks
            let msg = e
                .to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            runner::note!("error: {msg}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,usvg=error",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_specs(specs: &[PathBuf], sets: &[String], quiet: bool) -> Result<(), Error> {
    let mode = runner::progress::Mode::detect(quiet);
    // validate every file (and every sweep point) before running any
    let loaded = specs
        .iter()
        .map(|p| spec::sweep::expand(p, sets).map(|points| (p, points)))
        .collect::<Result<Vec<_>, _>>()?;
    for (path, points) in &loaded {
        if points.len() > 1 || !points[0].overrides.is_empty() {
            let o = sweep_options(Selection::All, false, 1, vec![], sets, quiet);
            report(runner::sweep::run(path, &o)?)?;
            name_report(&points[0].spec.results_dir, &points[0].spec.name, quiet);
            continue;
        }
        let s = &points[0].spec;
        let o = runner::experiment::run(s, mode)?;
        if !quiet {
            let test = o
                .test
                .map(|t| format!(", test acc {:.4}", t.acc()))
                .unwrap_or_default();
            let cached = if o.cache_hit {
                " (features from cache)"
            } else {
                ""
            };
            runner::note!(
                "{}: best val acc {:.4} at epoch {}{test}; {:.1} s{cached}; results in {}",
                s.name,
                o.best_val_acc,
                o.best_epoch,
                o.total_seconds,
                o.dir.display()
            );
        }
        name_report(&s.results_dir, &s.name, quiet);
    }
    Ok(())
}

fn sweep_options(
    selection: Selection,
    force: bool,
    jobs: usize,
    devices: Vec<String>,
    sets: &[String],
    quiet: bool,
) -> runner::sweep::Options {
    runner::sweep::Options {
        extract_shards: false,
        selection,
        force,
        jobs,
        devices,
        sets: sets.to_vec(),
        mode: runner::progress::Mode::detect(quiet),
    }
}

fn report(r: runner::sweep::Report) -> Result<(), Error> {
    if !r.busy.is_empty() {
        runner::note!(
            "{} point(s) were running in another process and were left to it: {:?}",
            r.busy.len(),
            r.busy
        );
    }
    if r.failed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = r
        .failed
        .iter()
        .map(|(i, m)| format!("point {i}: {m}"))
        .collect();
    Err(Error::Other(format!(
        "{} of {} points failed ({}); rerun to retry them, finished points are kept",
        r.failed.len(),
        r.failed.len() + r.ran.len(),
        list.join("; ")
    )))
}

/// The subcommands, each to its function.
fn run(cli: Cli) -> Result<(), Error> {
    let (sets, quiet) = (&cli.sets, cli.quiet);
    let Some(cmd) = cli.cmd else {
        return run_specs(&cli.specs, sets, quiet);
    };
    match cmd {
        Cmd::Run { specs } => run_specs(&specs, sets, quiet),
        Cmd::Sweep {
            spec,
            index,
            shard,
            jobs,
            devices,
            force,
            extract_shards,
        } => cmd_sweep(
            &spec,
            index,
            shard,
            jobs,
            devices,
            force,
            extract_shards,
            sets,
            quiet,
        ),
        Cmd::Compare {
            paths,
            by,
            format,
            baseline,
        } => cmd_compare(&paths, by, &format, baseline.as_deref()),
        Cmd::Predict {
            run_dir,
            inputs,
            top,
            format,
        } => cmd_predict(&run_dir, &inputs, top, &format),
        Cmd::Bench {
            spec,
            batches,
            epochs,
        } => cmd_bench(&spec, batches, epochs, sets),
        Cmd::Plot {
            paths,
            out,
            kind,
            by,
        } => cmd_plot(&paths, &out, &kind, by, quiet),
        Cmd::Report {
            paths,
            out,
            by,
            baseline,
        } => cmd_report(&paths, &out, by, baseline, quiet),
        Cmd::Plan { spec } => cmd_plan(&spec, sets),
        Cmd::Status { spec } => cmd_status(&spec, sets),
        Cmd::Slurm {
            spec,
            partition,
            gpus_per_task,
            time,
            max_parallel,
            sbatch_args,
            dry_run,
            extract_shards,
        } => {
            let o = runner::sweep::SlurmOptions {
                extract_shards,
                partition,
                gpus_per_task,
                time,
                max_parallel,
                sbatch_args,
                sets: sets.clone(),
                dry_run,
            };
            cmd_slurm(&spec, &o)
        }
        Cmd::Data(DataCmd::Synth {
            out,
            per_class,
            seed,
            preview,
        }) => cmd_synth(&out, per_class, seed, preview.as_deref(), quiet),
        Cmd::Devices => cmd_devices(),
        Cmd::Check { specs } => cmd_check(&specs, sets),
        Cmd::Extract { spec, out } => cmd_extract(&spec, &out, sets, quiet),
        Cmd::ExtractShard { spec, shard } => cmd_extract_shard(&spec, &shard, sets, quiet),
        Cmd::Weights(WeightsCmd::Inspect { file }) => cmd_inspect(&file),
        Cmd::Weights(WeightsCmd::Convert {
            input,
            output,
            arch,
            until,
        }) => cmd_convert(&input, &output, &arch, until.as_deref()),
    }
}

#[allow(clippy::too_many_arguments)]
fn cmd_sweep(
    spec: &Path,
    index: Option<usize>,
    shard: Option<String>,
    jobs: usize,
    devices: Vec<String>,
    force: bool,
    extract_shards: bool,
    sets: &[String],
    quiet: bool,
) -> Result<(), Error> {
    let selection = match (index, shard) {
        (Some(i), _) => Selection::Index(i),
        (None, Some(s)) => {
            Selection::parse_shard(&s).map_err(|m| Error::Spec(format!("--shard: {m}")))?
        }
        (None, None) => Selection::All,
    };
    let mut o = sweep_options(selection, force, jobs.max(1), devices, sets, quiet);
    o.extract_shards = extract_shards;
    report(runner::sweep::run(spec, &o)?)?;
    if let Ok(s) = spec::load(spec, sets) {
        name_report(&s.results_dir, &s.name, quiet);
    }
    Ok(())
}

/// Runs from the given places, with what could not be read said on stderr; an error if none.
fn collect_runs(what: &str, paths: &[PathBuf]) -> Result<Vec<runner::compare::RunRecord>, Error> {
    let (runs, warnings) = runner::compare::collect(paths);
    if runs.is_empty() {
        return Err(Error::Other(format!(
            "{what}: no runs could be read: {}",
            warnings.join("; ")
        )));
    }
    for w in &warnings {
        runner::note!("warning: {w}");
    }
    Ok(runs)
}

fn cmd_compare(
    paths: &[PathBuf],
    by: Vec<String>,
    format: &str,
    baseline: Option<&str>,
) -> Result<(), Error> {
    let runs = collect_runs("compare", paths)?;
    let by: Vec<String> = if by.is_empty() {
        runner::compare::DEFAULT_BY
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        by
    };
    let rows = runner::compare::group(&runs, &by, baseline)?;
    out_str!(runner::compare::render(&rows, &by, format)?);
    Ok(())
}

fn cmd_predict(run_dir: &Path, inputs: &[PathBuf], top: usize, format: &str) -> Result<(), Error> {
    let preds = runner::predict::predict(run_dir, inputs, top)?;
    match format {
        "json" => out!(
            "{}",
            serde_json::to_string_pretty(&preds).unwrap_or_default()
        ),
        "csv" => {
            out!("input,label,rank,class,name,probability");
            for p in &preds {
                for (r, (c, n, pr)) in p.top.iter().enumerate() {
                    let label = p.label.map(|l| l.to_string()).unwrap_or_default();
                    out!("{:?},{label},{},{c},{n:?},{pr:.6}", p.input, r + 1);
                }
            }
        }
        "table" => {
            for p in &preds {
                let label = p.label.map(|l| format!(" (label {l})")).unwrap_or_default();
                let top: Vec<String> = p
                    .top
                    .iter()
                    .map(|(c, n, pr)| format!("{c} {n} {pr:.3}"))
                    .collect();
                out!("{}{label}: {}", p.input, top.join(" | "));
            }
        }
        other => {
            return Err(Error::Other(format!(
                "--format {other:?}: expected table, csv or json"
            )))
        }
    }
    Ok(())
}

fn cmd_bench(path: &Path, batches: usize, epochs: usize, sets: &[String]) -> Result<(), Error> {
    let s = spec::load(path, sets)?;
    let r = runner::bench::run(&s, batches, epochs)?;
    let med = runner::results::median(&r.epoch_seconds[1.min(r.epoch_seconds.len())..]);
    out!(
        "{}: extraction {:.1} images/s ({} images), head epoch {:.4} s (median of epochs 2..); written to {}",
        s.name,
        r.extract_images_per_second,
        r.images,
        med,
        r.dir.display()
    );
    Ok(())
}

fn cmd_plot(
    paths: &[PathBuf],
    out: &Path,
    kind: &str,
    by: Vec<String>,
    quiet: bool,
) -> Result<(), Error> {
    let runs = collect_runs("plot", paths)?;
    let svg = match kind {
        "curves" => runner::plot::curves_svg(&runs)?,
        "scatter" => runner::plot::scatter_svg(&runs)?,
        "times" => {
            let by: Vec<String> = if by.is_empty() {
                vec!["device_name".into()]
            } else {
                by
            };
            runner::plot::times_svg(&runner::compare::group(&runs, &by, None)?, &by)?
        }
        other => {
            return Err(Error::Other(format!(
                "--kind {other:?}: expected curves, times or scatter"
            )))
        }
    };
    runner::plot::save(&svg, out)?;
    if !quiet {
        runner::note!("wrote {}", out.display());
    }
    Ok(())
}

fn cmd_report(
    paths: &[PathBuf],
    out: &Path,
    by: Vec<String>,
    baseline: Option<String>,
    quiet: bool,
) -> Result<(), Error> {
    let o = runner::report::Options { by, baseline };
    let w = runner::report::write(paths, out, &o)?;
    for warning in &w.warnings {
        runner::note!("warning: {warning}");
    }
    if !quiet {
        runner::note!(
            "wrote {} ({} runs, {} KiB)",
            out.display(),
            w.runs,
            w.bytes.div_ceil(1024)
        );
    }
    Ok(())
}

/// The command that writes an experiment's report, said at the end of a run or sweep.
fn name_report(results_dir: &Path, name: &str, quiet: bool) {
    if !quiet {
        let dir = results_dir.join(name);
        runner::note!(
            "report: runner report {} --out {}",
            dir.display(),
            dir.join("report.html").display()
        );
    }
}

fn cmd_plan(spec: &Path, sets: &[String]) -> Result<(), Error> {
    for (i, id, desc) in runner::sweep::plan(spec, sets)? {
        out!("{i:>4}  {id:<40}  {desc}");
    }
    Ok(())
}

fn cmd_status(spec: &Path, sets: &[String]) -> Result<(), Error> {
    for (i, id, state) in runner::sweep::status(spec, sets)? {
        out!("{i:>4}  {id:<40}  {state}");
    }
    Ok(())
}

fn cmd_slurm(spec: &Path, o: &runner::sweep::SlurmOptions) -> Result<(), Error> {
    let sub = runner::sweep::slurm(spec, o)?;
    match (&sub.sweep_job, &sub.extract_job) {
        (Some(id), extract) => {
            if let Some(e) = extract {
                runner::note!(
                    "submitted feature extraction as job array {e}; the sweep waits for it"
                );
            }
            out!("{id}")
        }
        (None, _) => {
            // --dry-run: the scripts themselves, as they would be submitted
            for script in &sub.scripts {
                let text = std::fs::read_to_string(script).map_err(|e| Error::io(script, e))?;
                out_str!(text);
                runner::note!("wrote {} (not submitted)", script.display());
            }
        }
    }
    Ok(())
}

fn cmd_extract_shard(path: &Path, shard: &str, sets: &[String], quiet: bool) -> Result<(), Error> {
    let bad = || {
        Error::Spec(format!(
            "--shard {shard:?}: expected I/N with I below N, e.g. --shard 0/4"
        ))
    };
    let (i, n) = shard.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    let mode = runner::progress::Mode::detect(quiet);
    let done = runner::sweep::extract_shard(path, sets, i, n, mode)?;
    if !quiet {
        runner::note!("shard {i}/{n}: {done} feature set(s) computed");
    }
    Ok(())
}

fn cmd_synth(
    out: &Path,
    per_class: usize,
    seed: u64,
    preview: Option<&Path>,
    quiet: bool,
) -> Result<(), Error> {
    let n = runner::data::synthetic::write_pickle(out, seed, per_class)?;
    if let Some(p) = preview {
        let d = runner::data::synthetic::generate(seed, per_class);
        let idx: Vec<usize> = (0..d.n).filter(|i| i % per_class < 8).collect();
        runner::data::save_grid(&d, &idx, 16, p)?;
    }
    if !quiet {
        runner::note!("wrote {} ({n} images, 43 classes, 32x32)", out.display());
    }
    Ok(())
}

fn cmd_devices() -> Result<(), Error> {
    for line in runner::device::list() {
        out!("{line}");
    }
    Ok(())
}

fn cmd_check(specs: &[PathBuf], sets: &[String]) -> Result<(), Error> {
    if specs.is_empty() {
        return Err(Error::Other(
            "runner check: name at least one experiment file".into(),
        ));
    }
    for p in specs {
        let s = spec::load(p, sets)?;
        runner::spec::budget::check_memory(&s)?;
        let issues = runner::spec::check_files(&s);
        if !issues.is_empty() {
            return Err(Error::Spec(format!(
                "{}: {}",
                p.display(),
                issues.join("; ")
            )));
        }
        out!(
            "{}: ok ({} {} frozen to {})",
            p.display(),
            s.name,
            s.arch.name(),
            s.freeze_name()
        );
    }
    Ok(())
}

fn cmd_extract(path: &Path, out: &Path, sets: &[String], quiet: bool) -> Result<(), Error> {
    let s = spec::load(path, sets)?;
    let r = features::extract_to_npz(&s, out)?;
    if !quiet {
        runner::note!(
            "wrote {} ({} x {} {} features) in {:.1} s ({:.1} images/s)",
            out.display(),
            r.n,
            r.dim,
            s.freeze_name(),
            r.seconds,
            r.n as f64 / r.seconds.max(1e-9)
        );
    }
    Ok(())
}

fn cmd_inspect(file: &Path) -> Result<(), Error> {
    for t in weights::inspect(file)? {
        out!(
            "{:<24} {:<20} {}",
            t.name,
            format!("{:?}", t.shape),
            t.dtype
        );
    }
    Ok(())
}

fn cmd_convert(input: &Path, output: &Path, arch: &str, until: Option<&str>) -> Result<(), Error> {
    let a = runner::arch::Arch::parse(arch)
        .ok_or_else(|| Error::Other(format!("unknown architecture {arch:?}")))?;
    let last = match until {
        None => a.layers().len() - 1,
        Some(l) => a.layer_index(l).ok_or_else(|| {
            Error::Other(format!(
                "--until {l:?}: {} has no such layer; layers are {}",
                a.name(),
                a.layers().join(", ")
            ))
        })?,
    };
    let set = weights::load_until(input, a, last)?;
    set.save_safetensors(output)?;
    out!(
        "wrote {} ({} tensors, candle layout)",
        output.display(),
        set.tensors.len()
    );
    Ok(())
}
