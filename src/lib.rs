//! runner: transfer learning of image classifiers from declarative TOML experiment files.
//!
//! Data flows one way: spec -> data -> frozen backbone -> feature cache -> trainable tail +
//! head -> epochs -> results, and imports follow it: the bottom layer (`error`, `fsio`, `arch`,
//! `backend`, `record`, `memory`, `threads`, `device`, `gpu`) imports nothing above it; `spec`,
//! `weights`, `backbone`, `data` come next; then `features` + `cache`, `train`, `results`;
//! `experiment` orders the stages of a run; the binary's `main.rs` only parses arguments and
//! dispatches.

pub mod arch;
pub mod backbone;
pub mod backend;
pub mod bench;
pub mod cache;
pub mod compare;
pub mod data;
pub mod device;
pub mod error;
pub mod experiment;
pub mod features;
pub mod fsio;
pub mod gpu;
pub mod interrupt;
#[cfg(test)]
pub(crate) mod kernel_host;
pub mod memory;
pub mod passes;
pub mod plot;
pub mod predict;
pub mod profile;
pub mod progress;
pub mod record;
pub mod report;
pub mod results;
pub mod spec;
pub mod sweep;
pub mod threads;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
