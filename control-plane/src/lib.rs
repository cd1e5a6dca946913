#![forbid(unsafe_code)]

pub mod attest;
