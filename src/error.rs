//! The one error type of the library. Every variant renders as a single paragraph that names
//! the file (or key) and the cause; the CLI prints it and exits non-zero.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in an experiment file or an override, already formatted with its location.
    #[error("{0}")]
    Spec(String),

    /// A file that could not be read, written or created.
    #[error("{}: {source}{}", path.display(), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Io {
        path: PathBuf,
        source: std::io::Error,
        hint: Option<String>,
    },

    /// A file whose content is not what the reader expects (corrupt, truncated, wrong kind).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// Weights that do not fit the architecture.
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },

    /// A dataset that cannot be used (empty, labels out of range, bad shapes).
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },

    /// A device that is not usable here.
    #[error("{0}")]
    Device(String),

    /// A numerical failure inside candle (shape mismatch in our own graph, device error).
    #[error("tensor computation failed: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),

    /// The run is in progress in another process (its lock is held).
    #[error("{0}")]
    Busy(String),

    /// Stopped by Ctrl-C / SIGTERM at a safe point (exit 130, like a shell).
    #[error("interrupted (Ctrl-C): finished results are saved; run the same command again to complete the rest")]
    Interrupted,

    /// Standard output was closed by its reader (`runner plan x.toml | head -1`): the command
    /// stops quietly, with the status a shell gives a writer whose pipe closed (141).
    #[error("standard output closed")]
    ClosedOutput,

    #[error("{0}")]
    Other(String),
}

/// candle appends a backtrace (when RUST_BACKTRACE is set) after its message: keep the message.
fn first_line(e: &candle_core::Error) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().to_string()
}

impl Error {
    /// A failed write to standard output: `ClosedOutput` for a closed pipe, else an I/O error.
    pub fn stdout(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Error::ClosedOutput
        } else {
            Error::io("standard output", e)
        }
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
            hint: None,
        }
    }

    pub fn io_hint(
        path: impl AsRef<Path>,
        source: std::io::Error,
        hint: impl Into<String>,
    ) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
            hint: Some(hint.into()),
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn weights(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn data(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// Process exit code: 2 for problems with what the user gave us (spec, files, device),
    /// 1 for failures while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Interrupted => 130,
            Error::ClosedOutput => 141,
            Error::Busy(_) => 75,
            Error::Candle(_) | Error::Other(_) => 1,
            _ => 2,
        }
    }
}
