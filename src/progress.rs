//! Progress on stderr: bars on a terminal, plain lines otherwise, nothing with `-q`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, else lines; `quiet` wins.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// One phase of work with a known number of units (images, epochs).
pub struct Task {
    mode: Mode,
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    started: std::time::Instant,
    last_line: std::time::Instant,
    /// Lines mode: a line for every step (epochs), not every 2 s (images).
    each_step: bool,
}

impl Task {
    pub fn new(mode: Mode, label: &str, total: u64, unit: &str) -> Task {
        let bar = (mode == Mode::Bars).then(|| {
            let b = ProgressBar::new(total);
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(label.to_string());
            b
        });
        let now = std::time::Instant::now();
        Task {
            mode,
            bar,
            label: label.to_string(),
            total,
            done: 0,
            started: now,
            last_line: now,
            each_step: false,
        }
    }

    /// A task that shows nothing.
    pub fn hidden() -> Task {
        Task::new(Mode::Quiet, "", 0, "")
    }

    /// In lines mode, a line for every step (for slow steps such as epochs).
    pub fn each_step(mut self) -> Task {
        self.each_step = true;
        self
    }

    pub fn advance(&mut self, n: u64, msg: &str) {
        self.done += n;
        match self.mode {
            Mode::Bars => {
                if let Some(b) = &self.bar {
                    b.inc(n);
                    b.set_message(msg.to_string());
                }
            }
            Mode::Lines => {
                // at most one line every 2 s, plus the last one
                if self.last_line.elapsed().as_secs_f64() > 2.0
                    || self.done >= self.total
                    || self.each_step
                {
                    let secs = self.started.elapsed().as_secs_f64().max(1e-9);
                    let rate = self.done as f64 / secs;
                    let left = self.total.saturating_sub(self.done) as f64 / rate.max(1e-9);
                    let eta = if self.done < self.total {
                        format!(
                            " eta {}",
                            humantime::format_duration(std::time::Duration::from_secs(
                                left.ceil() as u64
                            ))
                        )
                    } else {
                        String::new()
                    };
                    crate::note!(
                        "{}: {}/{} ({rate:.1}/s{eta}) {msg}",
                        self.label,
                        self.done,
                        self.total
                    );
                    self.last_line = std::time::Instant::now();
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        }
    }
}

/// A line on standard error that never fails: a closed stderr (`runner ... 2>&- `, a reader
/// that went away) must not turn a finished step into a crash. Use `note!`.
pub fn note_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `eprintln!` that ignores a closed standard error (see `progress::note_line`).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::progress::note_line(format_args!($($arg)*))
    };
}
