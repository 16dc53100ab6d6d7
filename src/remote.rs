//! Remote object stores (`s3://`, `gs://`, `az://`): credentials and endpoints from the standard environment
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`; never printed), bounded retries with backoff, and request timeouts.

use crate::error::StoreError;
use crate::store::RemoteUrl;
use object_store::{ClientOptions, ObjectStore, RetryConfig, path::Path as ObjPath};
use std::sync::Arc;
use std::time::Duration;

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

/// Opens the remote store at `url`, taken apart by [`crate::store::remote_parts`] as `parts`; the prefix everything
/// lives under is exactly `parts.prefix` (that function refused whatever a URL parser would rewrite).
pub fn open(url: &str, parts: &RemoteUrl) -> anyhow::Result<(Arc<dyn ObjectStore>, ObjPath)> {
    let retry = RetryConfig {
        max_retries: std::env::var("RMDISTILL_STORE_RETRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(5),
        retry_timeout: env_secs("RMDISTILL_STORE_RETRY_TIMEOUT", 120),
        ..Default::default()
    };
    // Client options replace what `from_env` read, so the one client setting users commonly set (plain HTTP for a
    // local S3-compatible server) is carried over explicitly.
    let allow_http = ["AWS_ALLOW_HTTP", "GOOGLE_ALLOW_HTTP", "AZURE_ALLOW_HTTP", "ALLOW_HTTP"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1"));
    let client = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(env_secs("RMDISTILL_STORE_TIMEOUT", 60))
        .with_connect_timeout(env_secs("RMDISTILL_STORE_CONNECT_TIMEOUT", 10));
    let fail = |e: object_store::Error| StoreError(format!("cannot open store {url}: {e}"));
    let os: Arc<dyn ObjectStore> = match parts.scheme {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(fail)?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(fail)?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(fail)?,
        ),
        other => {
            return Err(StoreError(format!(
                "store url {url}: unsupported scheme `{other}` (use file://, memory://, s3://, gs:// or az://)"
            ))
            .into());
        }
    };
    Ok((os, parts.prefix.iter().copied().collect()))
}
