//! A static registry in an S3 bucket (`s3://BUCKET[/PREFIX]`) as the
//! [`Objects`] of the collector: the objects under `PREFIX/v2/`.
//!
//! A bucket has no lock: an upload running at the same time is protected
//! by the grace period alone, measured by the server's clock (the `Date`
//! of its listing answer against each object's `LastModified`), so a
//! machine whose clock is off neither deletes fresh uploads nor keeps old
//! ones. Only when the server sends no `Date` is the local clock used.

use std::time::SystemTime;

use super::{Grace, Listing, Objects, Stored};
use crate::publish::client::Body;
use crate::publish::s3::{Bucket, S3Error};

/// Why the bucket could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{0} was listed, and is gone")]
    Gone(String),
}

/// The static registry in a bucket.
pub struct BucketObjects<'a> {
    bucket: &'a Bucket,
}

impl<'a> BucketObjects<'a> {
    pub fn new(bucket: &'a Bucket) -> Self {
        BucketObjects { bucket }
    }
}

impl Objects for BucketObjects<'_> {
    type Error = BucketError;

    fn list(&mut self) -> Result<Listing, BucketError> {
        let objects = self
            .bucket
            .list("v2/")?
            .into_iter()
            .map(|o| Stored {
                key: o.key,
                size: o.size,
                modified: o.last_modified,
            })
            .collect();
        // The server's clock; this machine's only without a Date header.
        #[allow(clippy::disallowed_methods)]
        let now = self.bucket.server_time().unwrap_or_else(SystemTime::now);
        Ok(Listing { objects, now })
    }

    fn read(&mut self, key: &str) -> Result<Vec<u8>, BucketError> {
        self.bucket
            .get(key)?
            .ok_or_else(|| BucketError::Gone(key.to_owned()))
    }

    fn delete(&mut self, key: &str) -> Result<(), BucketError> {
        Ok(self.bucket.delete(key)?)
    }

    fn put(&mut self, key: &str, bytes: &[u8], content_type: &str) -> Result<(), BucketError> {
        Ok(self.bucket.put(key, content_type, &Body::Bytes(bytes))?)
    }

    fn settle(
        &mut self,
        _: &[Stored],
        _: &[String],
        _: Option<Grace>,
    ) -> Result<Option<Vec<Stored>>, BucketError> {
        Ok(None)
    }
}
