//! proxypilot as a library: the two programs side by side over shared pieces, exposed so that
//! fuzz targets and Rust tests can drive the parsers and phases in-process.
//!
//! ```text
//! sidecar/     proxypilot serve: config, CA + minting, client connection limits, proxy phases
//! tokenizer/   proxypilot tokenizer: config, proxy phases, authorize, processors, Fly-Src
//! secret, sealing, host, resolve, trust, reply, timeouts   shared by both
//! policy       method/path rules (the sidecar's per-route allow/deny)
//! cli/         one file per subcommand, thin dispatch
//! logging, memory                                          process-wide setup
//! ```

pub mod cli;
pub mod host;
pub mod logging;
pub mod memory;
pub mod policy;
pub mod reply;
pub mod resolve;
pub mod sealing;
pub mod secret;
pub mod sidecar;
pub mod timeouts;
pub mod tokenizer;
pub mod trust;
