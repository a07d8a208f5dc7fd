//! The blob store on S3.

use async_trait::async_trait;
use llmo_runtime::ports::{BlobError, BlobStore};

use crate::config::Aws;

pub struct S3Blobs {
    pub aws: Aws,
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.aws
            .s3
            .put_object()
            .bucket(&self.aws.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| BlobError(format!("s3 put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e))))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match self.aws.s3.get_object().bucket(&self.aws.bucket).key(key).send().await {
            Ok(out) => Ok(Some(out.body.collect().await.map_err(|e| BlobError(e.to_string()))?.into_bytes().to_vec())),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(BlobError(format!("s3 get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))),
        }
    }
}

/// Where a `type: function` event over Lambda's 6 MB goes: under the run's own prefix in the
/// bucket (`runs/RUN/function-payloads/`, expired with the run); the function gets
/// `{ bucket, key }` and needs `s3:GetObject` on `runs/*/function-payloads/*`.
#[async_trait]
impl llmo_lambda::ClaimCheck for S3Blobs {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<serde_json::Value, String> {
        BlobStore::put(self, key, body).await.map_err(|e| e.0)?;
        Ok(serde_json::json!({ "bucket": self.aws.bucket, "key": key }))
    }
}
