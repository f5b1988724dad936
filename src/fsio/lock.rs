//! Exclusive locks for run folders and cache entries that never outlive their holder.
//!
//! A lock is the kernel's `flock` on a small file that also records who holds it
//! (`pid host time`). The kernel drops the lock when its holder exits, killed or crashed, so a
//! lock file left behind is never mistaken for a live holder. Where the file system refuses
//! `flock` (some network mounts), the recorded holder decides instead: the lock is stale when
//! the holder was on this host and its process is gone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

/// The outcome of `try_acquire`.
#[derive(Debug)]
pub enum Attempt {
    Acquired(Lock),
    /// Someone else holds it: their record (`pid host time`).
    Held(String),
}

/// This host's name (for lock records and temporary file names).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The host name as it appears in temporary file names (dots replaced, so names split cleanly).
pub fn host_tag() -> String {
    hostname().replace(['.', '/'], "_")
}

/// Whether process `pid` of this host is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn record(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    s.trim().to_string()
}

fn write_record(f: &mut File) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The record is for messages and for file systems without flock; failing to write it does
    // not weaken the kernel lock.
    let _ = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{} {} {now}", std::process::id(), hostname()))
        .and_then(|_| f.flush());
}

/// Whether a recorded holder is gone: same host, process not running.
fn stale(rec: &str) -> bool {
    let mut it = rec.split_whitespace();
    match (it.next().and_then(|p| p.parse::<u32>().ok()), it.next()) {
        (Some(pid), Some(host)) => host == hostname() && !pid_alive(pid),
        _ => true,
    }
}

/// Take the lock at `path` if nobody holds it.
pub fn try_acquire(path: &Path) -> Result<Attempt> {
    let mut f = open(path)?;
    match f.try_lock() {
        Ok(()) => {
            write_record(&mut f);
            Ok(Attempt::Acquired(Lock {
                _file: f,
                path: path.to_path_buf(),
            }))
        }
        Err(TryLockError::WouldBlock) => Ok(Attempt::Held(record(&mut f))),
        Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            let rec = record(&mut f);
            if rec.is_empty() || stale(&rec) {
                write_record(&mut f);
                Ok(Attempt::Acquired(Lock {
                    _file: f,
                    path: path.to_path_buf(),
                }))
            } else {
                Ok(Attempt::Held(rec))
            }
        }
        Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Take the lock at `path`, waiting for its holder if there is one.
pub fn acquire(path: &Path) -> Result<Lock> {
    let mut f = open(path)?;
    match f.lock() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => loop {
            let rec = record(&mut f);
            if rec.is_empty() || stale(&rec) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        },
        Err(e) => return Err(Error::io(path, e)),
    }
    write_record(&mut f);
    Ok(Lock {
        _file: f,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_sees_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = match try_acquire(&p).unwrap() {
            Attempt::Acquired(l) => l,
            Attempt::Held(h) => panic!("free lock reported held by {h}"),
        };
        match try_acquire(&p).unwrap() {
            Attempt::Held(rec) => {
                assert!(rec.starts_with(&std::process::id().to_string()), "{rec}")
            }
            Attempt::Acquired(_) => panic!("lock taken twice"),
        }
        drop(a);
        assert!(matches!(try_acquire(&p).unwrap(), Attempt::Acquired(_)));
    }

    #[test]
    fn records_of_dead_local_processes_are_stale() {
        assert!(stale(&format!("{} {} 0", u32::MAX - 1, hostname())));
        assert!(!stale(&format!("{} {} 0", std::process::id(), hostname())));
        assert!(
            !stale("1 some-other-host 0"),
            "other hosts' holders are never guessed dead"
        );
        assert!(stale("garbage"));
    }
}
