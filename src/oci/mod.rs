//! OCI image layouts: the documents (config, manifest, index), their
//! canonical JSON, writing a layout atomically, and verifying one.
//!
//! Every reader of a layout or a registry (`verify`, `gc`, `push`,
//! `export-static`, `build --previous`) reads the one typed model
//! ([`model`], with the media types of [`media_type`]) through the one
//! walker ([`walk`]), checks a blob against its descriptor with the one
//! [`check`], and follows two rules kept here: image indexes nest at most
//! [`MAX_NESTING`] deep, and a file of a layout is opened through
//! [`files`], never through a symbolic link.
//!
//! `oci` imports nothing above it: not `layer`, `plan` or `publish`.

pub mod base;
pub mod digest;
pub mod files;
pub mod gc;
pub mod image;
pub mod json;
pub mod layout;
pub mod media_type;
pub mod model;
pub mod previous;
pub mod temp;
pub mod verify;
pub mod walk;

pub use digest::{Digest, DigestWriter};
pub use media_type::MediaType;
pub use model::{check, CheckError, Descriptor, Mismatch};

/// How deep image indexes may nest, for every reader: the index a tag
/// names is level 1, an index it lists level 2, and so on. Real images use
/// one level (two for an index of indexes); the limit keeps a hostile
/// layout or registry from making a reader recurse without end.
pub const MAX_NESTING: usize = 8;

/// An image index below [`MAX_NESTING`] levels of indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("image indexes nest more than {MAX_NESTING} deep")]
pub struct TooDeep;

/// Checks the nesting of an image index reached through `depth` indexes
/// (0 for the one a tag names).
pub fn check_nesting(depth: usize) -> Result<(), TooDeep> {
    if depth >= MAX_NESTING {
        Err(TooDeep)
    } else {
        Ok(())
    }
}
