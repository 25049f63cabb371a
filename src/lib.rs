//! nixoci turns Nix closures into multi-platform OCI image layouts.
//!
//! The pipeline runs in one direction, one module a stage:
//! [`eval`] (runs `nix`) -> [`closure`] -> [`plan`] -> [`layer`] -> [`oci`].
//! [`store_path`] and [`platform`] are the values they share, [`error`]
//! how errors read, [`cli`] the command line.

pub mod cli;
pub mod closure;
pub mod elf;
pub mod error;
pub mod eval;
pub mod installable;
pub mod layer;
pub mod oci;
pub mod pipeline;
pub mod plan;
pub mod platform;
pub mod publish;
pub mod rootfs;
pub mod spec;
pub mod store_path;
