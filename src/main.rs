//! proxypilot: a sidecar that lets untrusted code call APIs with dummy credentials.
//!
//! The shell's clients speak TLS to the sidecar (certificates minted per SNI from its own CA);
//! the sidecar drops the dummy credential and forwards each request through a tokenizer that
//! opens a sealed secret and injects the real one. See README.md for the picture.

fn main() {
    // Allocator settings first, before any thread exists (arenas are made per thread).
    proxypilot::memory::tune();
    proxypilot::logging::init();
    std::process::exit(proxypilot::cli::main());
}
