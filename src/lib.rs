//! twinrig: the library behind the `rig` binary.
pub mod config;
pub mod extract;
pub mod session;
pub mod sim;
