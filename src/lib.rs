//! proxypilot as a library: the modules behind the `proxypilot` binary, exposed so that fuzz
//! targets and integration tests can drive the parsers and phases in-process.

pub mod authorize;
pub mod ca;
pub mod certstore;
pub mod cli;
pub mod config;
pub mod conn;
pub mod flysrc;
pub mod host;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod processor;
pub mod proxy;
pub mod reply;
pub mod resolve;
pub mod sealing;
pub mod secret;
pub mod spares;
pub mod tokenizer;
