//! The `runner` command line: parses arguments and calls the library. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use runner::{features, spec, weights, Error};

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Transfer learning of image classifiers from TOML experiment files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Validate experiment files without running them
    Check { specs: Vec<PathBuf> },
    /// Write the frozen backbone's features of every sample to an .npz (features, labels)
    Extract {
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect or convert weight files
    #[command(subcommand)]
    Weights(WeightsCmd),
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // one paragraph: nested messages may carry line breaks
            let msg = e
                .to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("error: {msg}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
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

fn run(cli: Cli) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Check { specs } => {
            if specs.is_empty() {
                return Err(Error::Other(
                    "runner check: name at least one experiment file".into(),
                ));
            }
            for p in specs {
                let s = spec::load(&p, &cli.sets)?;
                let issues = runner::spec::check_files(&s);
                if issues.is_empty() {
                    println!(
                        "{}: ok ({} {} frozen to {})",
                        p.display(),
                        s.name,
                        s.arch.name(),
                        s.freeze_name()
                    );
                } else {
                    return Err(Error::Spec(format!(
                        "{}: {}",
                        p.display(),
                        issues.join("; ")
                    )));
                }
            }
            Ok(())
        }
        Cmd::Extract { spec: path, out } => {
            let s = spec::load(&path, &cli.sets)?;
            let r = features::extract_to_npz(&s, &out)?;
            if !cli.quiet {
                eprintln!(
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
        Cmd::Weights(WeightsCmd::Inspect { file }) => {
            for t in weights::inspect(&file)? {
                println!(
                    "{:<24} {:<20} {}",
                    t.name,
                    format!("{:?}", t.shape),
                    t.dtype
                );
            }
            Ok(())
        }
        Cmd::Weights(WeightsCmd::Convert {
            input,
            output,
            arch,
        }) => {
            let a = runner::backbone::Arch::parse(&arch)
                .ok_or_else(|| Error::Other(format!("unknown architecture {arch:?}")))?;
            let set = weights::load(&input, a)?;
            set.save_safetensors(&output)?;
            println!(
                "wrote {} ({} tensors, candle layout)",
                output.display(),
                set.tensors.len()
            );
            Ok(())
        }
    }
}
