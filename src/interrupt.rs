//! Ctrl-C (SIGINT) and SIGTERM: the first asks the work to stop at the next safe point (after
//! the current epoch's CSV row, between extraction batches, between sweep points); the run is
//! then marked "interrupted" in its `summary.json` and `runner` exits 130. A second signal ends
//! the process at once (exit 130); files already written stay whole, since every result file is
//! written through a temporary file and a rename.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Install the handlers (the CLI does this once at start; a library user may skip it).
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit sees the flag as it was before this signal.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag().clone())
            .and_then(|_| signal_hook::flag::register(sig, flag().clone()))
            .map_err(|e| Error::Other(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// `Err(Error::Interrupted)` once a stop was asked for.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Ask for a stop, as a signal would (for tests and embedding programs).
pub fn request() {
    flag().store(true, Ordering::SeqCst);
}
