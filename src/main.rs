//! The `runner` command line: parses arguments and calls the library, one small function per
//! subcommand (`cmd_*`); `run` is the dispatch table. No logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Sweep(SweepArgs),
    /// Print the points of a sweep (index, run id, overrides) without running
    Plan { spec: PathBuf },
    /// Report which points are done, started or missing
    Status { spec: PathBuf },
    /// Submit a sweep to Slurm as a job array (one task per point)
    Slurm(SlurmArgs),
    /// Compute one shard of a spec's frozen features into the feature cache, e.g. --shard 0/4
    /// (what `runner slurm --extract-shards` runs in each task)
    #[command(hide = true)]
    ExtractShard(ExtractShardArgs),
    /// Compare runs and epoch timings across devices and machines (folders, epochs.csv, summary.csv)
    Compare(CompareArgs),
    /// Classify images (files, folders, or train.p-style pickles) with a finished run's head
    Predict(PredictArgs),
    /// Time extraction and head epochs on the spec's device without a full run (rows for compare)
    Bench(BenchArgs),
    /// Draw learning curves, epoch times per device, or accuracy vs epoch time (.svg or .png)
    Plot(PlotArgs),
    /// One self-contained HTML page over runs from any number of machines (runs, timing by
    /// device, learning curves, swept settings, the best run's confusion matrix, machines)
    Report(ReportArgs),
    /// Validate experiment files without running them
    Check { specs: Vec<PathBuf> },
    /// List the devices this runner can use (CPU, and GPUs when built with CUDA)
    Devices,
    /// Write the frozen backbone's features of every sample to an .npz (features, labels)
    Extract(ExtractArgs),
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
    Synth(SynthArgs),
}

#[derive(Subcommand)]
enum WeightsCmd {
    /// List the tensors a weights file stores (name, shape, dtype), as stored
    Inspect { file: PathBuf },
    /// Convert to .safetensors in runner's (candle) layout, checked against an architecture
    Convert(ConvertArgs),
}

#[derive(Args)]
struct SweepArgs {
    spec: PathBuf,
    /// Run only point I
    #[arg(long, conflicts_with = "shard")]
    index: Option<usize>,
    /// Run every point whose index % N == I, e.g. --shard 0/4
    #[arg(long, value_name = "I/N")]
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
}

#[derive(Args)]
struct SlurmArgs {
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
}

#[derive(Args)]
struct ExtractShardArgs {
    spec: PathBuf,
    #[arg(long, value_name = "I/N")]
    shard: String,
}

/// How `compare` prints its table.
#[derive(Clone, Copy, ValueEnum)]
enum TableFormat {
    Table,
    Csv,
    Markdown,
    Json,
}

#[derive(Args)]
struct CompareArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Grouping keys (device_name, experiment, backbone, freeze, output, batch_size, dtype, lr, hidden, optimizer)
    #[arg(long, value_delimiter = ',')]
    by: Vec<String>,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    format: TableFormat,
    /// Add a speed-up column relative to the first row whose keys contain this text
    #[arg(long)]
    baseline: Option<String>,
}

/// How `predict` prints its classes.
#[derive(Clone, Copy, ValueEnum)]
enum PredictFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
struct PredictArgs {
    run_dir: PathBuf,
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Classes shown per image
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[arg(long, value_enum, default_value_t = PredictFormat::Table)]
    format: PredictFormat,
}

#[derive(Args)]
struct BenchArgs {
    spec: PathBuf,
    /// Extraction batches timed (the first is warm-up)
    #[arg(long, default_value_t = 4)]
    batches: usize,
    /// Head epochs timed on the extracted features
    #[arg(long, default_value_t = 3)]
    epochs: usize,
}

/// What `plot` draws.
#[derive(Clone, Copy, ValueEnum)]
enum PlotKind {
    /// learning curves
    Curves,
    /// epoch times per device (or the `--by` keys)
    Times,
    /// accuracy against epoch time
    Scatter,
}

#[derive(Args)]
struct PlotArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = PlotKind::Curves)]
    kind: PlotKind,
    /// Grouping keys for `times` (as for compare)
    #[arg(long, value_delimiter = ',')]
    by: Vec<String>,
}

#[derive(Args)]
struct ReportArgs {
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
}

#[derive(Args)]
struct ExtractArgs {
    spec: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 40)]
    per_class: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also save a PNG grid with 8 images of every class
    #[arg(long)]
    preview: Option<PathBuf>,
}

#[derive(Args)]
struct ConvertArgs {
    input: PathBuf,
    output: PathBuf,
    #[arg(long, default_value = "alexnet")]
    arch: String,
    /// Convert the layers up to this one only (a convolutional base without fc layers:
    /// --until pool5)
    #[arg(long)]
    until: Option<String>,
}

/// The options every subcommand shares.
struct Global {
    sets: Vec<String>,
    quiet: bool,
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
    runner::memory::reuse_freed_memory();
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
    // colour only on a terminal, and never with NO_COLOR set (no-color.org): Slurm's .out
    // files and `2>log` get plain text
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn run_specs(specs: &[PathBuf], sets: &[String], quiet: bool) -> Result<(), Error> {
    let mode = runner::progress::Mode::detect(quiet);
    // validate every file (and every sweep point) before running any
    let loaded = specs
        .iter()
        .map(|p| spec::sweep::expand(p, sets).map(|points| (p, points)))
        .collect::<Result<Vec<_>, _>>()?;
    if loaded.len() > 1 {
        // files that read one backbone at several cut points share their extraction passes
        let o = sweep_options(Selection::All, false, 1, vec![], sets, quiet);
        let all: Vec<&spec::sweep::Point> = loaded.iter().flat_map(|(_, p)| p.iter()).collect();
        runner::sweep::shared_passes(&all, &o)?;
    }
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
    let g = Global {
        sets: cli.sets,
        quiet: cli.quiet,
    };
    let Some(cmd) = cli.cmd else {
        return run_specs(&cli.specs, &g.sets, g.quiet);
    };
    match cmd {
        Cmd::Run { specs } => run_specs(&specs, &g.sets, g.quiet),
        Cmd::Sweep(a) => cmd_sweep(a, &g),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Predict(a) => cmd_predict(a),
        Cmd::Bench(a) => cmd_bench(a, &g),
        Cmd::Plot(a) => cmd_plot(a, &g),
        Cmd::Report(a) => cmd_report(a, &g),
        Cmd::Plan { spec } => cmd_plan(&spec, &g.sets),
        Cmd::Status { spec } => cmd_status(&spec, &g.sets),
        Cmd::Slurm(a) => cmd_slurm(a, &g),
        Cmd::Data(DataCmd::Synth(a)) => cmd_synth(a, &g),
        Cmd::Devices => cmd_devices(),
        Cmd::Check { specs } => cmd_check(&specs, &g.sets),
        Cmd::Extract(a) => cmd_extract(a, &g),
        Cmd::ExtractShard(a) => cmd_extract_shard(a, &g),
        Cmd::Weights(WeightsCmd::Inspect { file }) => cmd_inspect(&file),
        Cmd::Weights(WeightsCmd::Convert(a)) => cmd_convert(a),
    }
}

fn cmd_sweep(a: SweepArgs, g: &Global) -> Result<(), Error> {
    let selection = match (a.index, &a.shard) {
        (Some(i), _) => Selection::Index(i),
        (None, Some(s)) => {
            Selection::parse_shard(s).map_err(|m| Error::Spec(format!("--shard: {m}")))?
        }
        (None, None) => Selection::All,
    };
    let mut o = sweep_options(
        selection,
        a.force,
        a.jobs.max(1),
        a.devices,
        &g.sets,
        g.quiet,
    );
    o.extract_shards = a.extract_shards;
    report(runner::sweep::run(&a.spec, &o)?)?;
    if let Ok(s) = spec::load(&a.spec, &g.sets) {
        name_report(&s.results_dir, &s.name, g.quiet);
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

fn cmd_compare(a: CompareArgs) -> Result<(), Error> {
    let runs = collect_runs("compare", &a.paths)?;
    let by: Vec<String> = if a.by.is_empty() {
        runner::compare::DEFAULT_BY
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        a.by
    };
    let rows = runner::compare::group(&runs, &by, a.baseline.as_deref())?;
    let format = match a.format {
        TableFormat::Table => "table",
        TableFormat::Csv => "csv",
        TableFormat::Markdown => "markdown",
        TableFormat::Json => "json",
    };
    out_str!(runner::compare::render(&rows, &by, format)?);
    Ok(())
}

fn cmd_predict(a: PredictArgs) -> Result<(), Error> {
    let preds = runner::predict::predict(&a.run_dir, &a.inputs, a.top)?;
    match a.format {
        PredictFormat::Json => out!(
            "{}",
            serde_json::to_string_pretty(&preds).unwrap_or_default()
        ),
        PredictFormat::Csv => {
            out!("input,label,rank,class,name,probability");
            for p in &preds {
                for (r, (c, n, pr)) in p.top.iter().enumerate() {
                    let label = p.label.map(|l| l.to_string()).unwrap_or_default();
                    out!("{:?},{label},{},{c},{n:?},{pr:.6}", p.input, r + 1);
                }
            }
        }
        PredictFormat::Table => {
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
    }
    Ok(())
}

fn cmd_bench(a: BenchArgs, g: &Global) -> Result<(), Error> {
    let s = spec::load(&a.spec, &g.sets)?;
    let r = runner::bench::run(&s, a.batches, a.epochs)?;
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

fn cmd_plot(a: PlotArgs, g: &Global) -> Result<(), Error> {
    let runs = collect_runs("plot", &a.paths)?;
    let svg = match a.kind {
        PlotKind::Curves => runner::plot::curves_svg(&runs)?,
        PlotKind::Scatter => runner::plot::scatter_svg(&runs)?,
        PlotKind::Times => {
            let by: Vec<String> = if a.by.is_empty() {
                vec!["device_name".into()]
            } else {
                a.by
            };
            runner::plot::times_svg(&runner::compare::group(&runs, &by, None)?, &by)?
        }
    };
    runner::plot::save(&svg, &a.out)?;
    if !g.quiet {
        runner::note!("wrote {}", a.out.display());
    }
    Ok(())
}

fn cmd_report(a: ReportArgs, g: &Global) -> Result<(), Error> {
    let o = runner::report::Options {
        by: a.by,
        baseline: a.baseline,
    };
    let (out, quiet) = (&a.out, g.quiet);
    let w = runner::report::write(&a.paths, out, &o)?;
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

fn cmd_slurm(a: SlurmArgs, g: &Global) -> Result<(), Error> {
    let o = runner::sweep::SlurmOptions {
        extract_shards: a.extract_shards,
        partition: a.partition,
        gpus_per_task: a.gpus_per_task,
        time: a.time,
        max_parallel: a.max_parallel,
        sbatch_args: a.sbatch_args,
        sets: g.sets.clone(),
        dry_run: a.dry_run,
    };
    let sub = runner::sweep::slurm(&a.spec, &o)?;
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

fn cmd_extract_shard(a: ExtractShardArgs, g: &Global) -> Result<(), Error> {
    let (i, n) = runner::sweep::parse_shard(&a.shard)
        .map_err(|m| Error::Spec(format!("--shard {:?}: {m}", a.shard)))?;
    let mode = runner::progress::Mode::detect(g.quiet);
    let done = runner::sweep::extract_shard(&a.spec, &g.sets, i, n, mode)?;
    if !g.quiet {
        runner::note!("shard {i}/{n}: {done} feature set(s) computed");
    }
    Ok(())
}

fn cmd_synth(a: SynthArgs, g: &Global) -> Result<(), Error> {
    let (out, seed, per_class, quiet) = (&a.out, a.seed, a.per_class, g.quiet);
    let n = runner::data::synthetic::write_pickle(out, seed, per_class)?;
    if let Some(p) = &a.preview {
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

fn cmd_extract(a: ExtractArgs, g: &Global) -> Result<(), Error> {
    let (out, s) = (&a.out, spec::load(&a.spec, &g.sets)?);
    let r = features::extract_to_npz(&s, out)?;
    if !g.quiet {
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

fn cmd_convert(args: ConvertArgs) -> Result<(), Error> {
    let (arch, output) = (&args.arch, &args.output);
    let a = runner::arch::Arch::parse(arch).ok_or_else(|| {
        let names: Vec<&str> = runner::arch::REGISTRY.iter().map(|a| a.name()).collect();
        Error::Other(format!(
            "unknown architecture {arch:?}; expected one of {}",
            names.join(", ")
        ))
    })?;
    let last = match args.until.as_deref() {
        None => a.layers().len() - 1,
        Some(l) => a.layer_index(l).ok_or_else(|| {
            Error::Other(format!(
                "--until {l:?}: {} has no such layer; layers are {}",
                a.name(),
                a.layers().join(", ")
            ))
        })?,
    };
    let set = weights::load_until(&args.input, a, last)?;
    set.save_safetensors(output)?;
    out!(
        "wrote {} ({} tensors, candle layout)",
        output.display(),
        set.tensors.len()
    );
    Ok(())
}
