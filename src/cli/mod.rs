//! Operator subcommands. Each returns the exit code to use: 0 on success,
//! 1 when the input is well-formed but fails the check; usage errors are
//! clap's (exit 2).
pub mod admin_http;
pub mod authz;
pub mod ca;
pub mod check;
pub mod identity;
pub mod inject;
pub mod quarantine;
pub mod status;
pub mod token;
pub mod why;
