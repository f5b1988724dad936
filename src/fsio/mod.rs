//! The file system layer at the bottom of runner: atomic writes (temporary file + rename),
//! clean-up of the temporaries a killed writer left, and locks that never outlive their holder.
//! It imports nothing of runner but `error`; results, weights, cache and the rest use it.

pub mod atomic;
pub mod lock;

pub use atomic::{remove_stale_temps, write_atomic, AtomicFile, BackgroundWriter};
pub use lock::{acquire, try_acquire, Attempt, Lock};

/// What a path that is not a regular file is ("a directory", "a character device", "a FIFO"
/// ...), or `None` for a regular file (after following links) or a path that does not exist.
/// Reading a device or a FIFO may never end or block: callers check first.
pub fn not_regular(path: &std::path::Path) -> Option<&'static str> {
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}
