//! Atomic file writes: every file runner writes goes to a temporary file in the same folder
//! (`.NAME.HOST.PID.tmp`), is flushed and synced, then renamed into place, so a reader sees the
//! old file or the new one, never a part. Also the clean-up of temporaries that killed writers
//! left behind, and a background writer for files rewritten every epoch.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::lock::{host_tag, pid_alive};
use crate::error::{Error, Result};

/// A file being written next to its final path; `commit` renames it into place, dropping it
/// without commit removes it.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // `.NAME.HOST.PID.tmp`: a killed writer's leftovers are recognisable
        // (`remove_stale_temps`), and two hosts sharing a folder never collide.
        let tmp = dest.with_file_name(format!(".{name}.{}.{}.tmp", host_tag(), std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(std::io::BufWriter::new(f)),
        })
    }

    pub fn writer(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        // `file` is Some until commit() consumes self
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<()> {
        if let Some(w) = self.file.take() {
            let f = w
                .into_inner()
                .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Atomic writes on a background thread, in the order given, so that a file written every
/// epoch (the best head so far) is synced to disk while the next epoch trains. When writes
/// queue up for the same file, only the newest is written. [`BackgroundWriter::finish`] waits
/// for everything given and returns the first error; dropping the writer also waits.
pub struct BackgroundWriter {
    tx: Option<std::sync::mpsc::Sender<(PathBuf, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl BackgroundWriter {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name("runner-writer".into())
            .spawn(move || -> Result<()> {
                while let Ok(mut job) = rx.recv() {
                    // a newer version of the same file already waiting replaces this one
                    let mut later = Vec::new();
                    while let Ok(next) = rx.try_recv() {
                        if next.0 == job.0 && later.is_empty() {
                            job = next;
                        } else {
                            later.push(next);
                        }
                    }
                    write_atomic(&job.0, &job.1)?;
                    for (p, b) in later {
                        write_atomic(&p, &b)?;
                    }
                }
                Ok(())
            })
            .ok();
        BackgroundWriter {
            tx: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    /// Queue `bytes` for `dest` (written at once, on this thread, if no thread could start).
    /// An error from an earlier write is returned here or by `finish`.
    pub fn write(&mut self, dest: &Path, bytes: Vec<u8>) -> Result<()> {
        match &self.tx {
            Some(tx) => match tx.send((dest.to_path_buf(), bytes)) {
                Ok(()) => Ok(()),
                // the thread stopped: it returns why
                Err(std::sync::mpsc::SendError((p, b))) => {
                    self.finish()?;
                    write_atomic(&p, &b)
                }
            },
            None => write_atomic(dest, &bytes),
        }
    }

    /// Wait until every queued write is on disk; the first error, if any.
    pub fn finish(&mut self) -> Result<()> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Other("the background file writer panicked".into())),
        }
    }
}

impl Default for BackgroundWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e}");
        }
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    let tmp = f.path().to_path_buf();
    f.writer()
        .write_all(bytes)
        .map_err(|e| Error::io(&tmp, e))?;
    f.commit()
}

/// Remove temporary files (`.NAME.HOST.PID.tmp`, see `AtomicFile`) that a process of
/// this host left behind when it was killed. Files of live processes and of other hosts stay.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let host = host_tag();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        let mut parts = stem.rsplitn(3, '.');
        let (Some(pid), Some(h)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>() {
            if h == host && !pid_alive(pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_writes_land_in_order_and_errors_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        let mut w = BackgroundWriter::new();
        for i in 0..50u32 {
            w.write(&a, i.to_le_bytes().repeat(1000)).unwrap();
        }
        w.write(&b, b"other".to_vec()).unwrap();
        w.write(&a, b"last".to_vec()).unwrap();
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(&a).unwrap(),
            b"last",
            "the newest version wins"
        );
        assert_eq!(std::fs::read(&b).unwrap(), b"other");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");

        // a destination under a plain file cannot be written: the error is reported
        let blocked = dir.path().join("a.bin").join("head.safetensors");
        let mut w = BackgroundWriter::new();
        let first = w.write(&blocked, vec![1, 2, 3]);
        let err = first.and_then(|_| w.finish()).unwrap_err();
        assert!(err.to_string().contains("a.bin"), "{err}");
    }

    #[test]
    fn stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_tag();
        let dead = dir
            .path()
            .join(format!(".a.csv.{host}.{}.tmp", u32::MAX - 1));
        let live = dir
            .path()
            .join(format!(".b.csv.{host}.{}.tmp", std::process::id()));
        let other = dir.path().join(".c.csv.elsewhere.1.tmp");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        remove_stale_temps(dir.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }
}
