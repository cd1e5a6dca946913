//! Helpers shared by the control plane's integration tests. Each test binary
//! that declares `mod support;` compiles all of it and uses only a part, so
//! the parts it does not use are not dead code.
#![allow(dead_code)]

pub mod apiserver;
pub mod control_plane;
pub mod flood;
