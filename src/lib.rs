//! runner: transfer learning of image classifiers from declarative TOML experiment files.
//!
//! Data flows one way: spec -> data -> frozen backbone -> features -> results.

pub mod backbone;
pub mod data;
pub mod device;
pub mod error;
pub mod features;
pub mod results;
pub mod spec;
pub mod weights;

pub use error::{Error, Result};
