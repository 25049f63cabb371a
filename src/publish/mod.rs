//! Publish: the last pipeline stage, getting an OCI image layout out to
//! the places people pull from.
//!
//! - [`push`] speaks the OCI distribution API to a registry (blobs first,
//!   then per-platform manifests, then the image index under its tag), over
//!   the HTTP client in [`client`] with the credentials and challenges of
//!   [`auth`].
//! - [`fetch`] reads an image's manifests (and configs) back from a
//!   registry over the same client, for `build --previous`;
//!   [`previous`] says where a `--previous IMAGE` is (a layout or a
//!   registry) and reads its layers from there.
//! - [`base`] reads a base image (`build --from`, `nixoci pull`) from a
//!   layout or a registry, and copies its layer blobs as they are.
//! - [`static_export`] writes a static registry tree that a plain web
//!   server or an S3 bucket serves read-only, with the nginx, Caddy and S3
//!   metadata a static server cannot guess; [`s3_push`] writes the same
//!   keys ([`tree`]) straight into an S3 bucket through the client in
//!   [`s3`], configured as the AWS tools are ([`aws`]).
//!
//! `push` and `static_export` read the image through [`source`]; all three
//! check names and tags with the pure [`reference`] grammar, so nothing a
//! user types reaches a URL or a file name unchecked.

pub mod archive;
pub mod auth;
pub mod aws;
pub mod base;
pub mod client;
pub mod fetch;
pub mod gc;
pub mod previous;
pub mod push;
pub mod reference;
pub mod s3;
pub mod s3_push;
pub mod source;
pub mod static_export;
pub mod tree;
