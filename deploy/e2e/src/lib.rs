//! End-to-end tests live in `tests/pipeline/`; this crate has no code of its own.
#![forbid(unsafe_code)]
