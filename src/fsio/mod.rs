//! The file system layer at the bottom of runner: atomic writes (temporary file + rename),
//! clean-up of the temporaries a killed writer left, and locks that never outlive their holder.
//! It imports nothing of runner but `error`; results, weights, cache and the rest use it.

pub mod atomic;
pub mod lock;

pub use atomic::{remove_stale_temps, write_atomic, AtomicFile, BackgroundWriter};
pub use lock::{acquire, try_acquire, Attempt, Lock};
