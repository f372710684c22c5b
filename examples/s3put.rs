//! Uploads local files to a bucket, creating the bucket if needed.
//! Used by scripts/demo.sh to seed sample data; reads credentials from the
//! AWS_* environment variables.
//!
//!   s3put ENDPOINT_URL BUCKET KEY=FILE [KEY=FILE ...]   (split at the last =)
//!   (a KEY ending in '/' with an empty FILE part creates a directory marker)

use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(endpoint), Some(bucket)) = (args.next(), args.next()) else {
        eprintln!("usage: s3put ENDPOINT_URL BUCKET KEY=FILE...");
        std::process::exit(2);
    };
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        ))
        .endpoint_url(endpoint)
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    if client.head_bucket().bucket(&bucket).send().await.is_err() {
        client.create_bucket().bucket(&bucket).send().await?;
    }
    for pair in args {
        let (key, file) = pair.rsplit_once('=').ok_or("arguments are KEY=FILE")?;
        let body = if file.is_empty() {
            Vec::new()
        } else {
            std::fs::read(file)?
        };
        client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await?;
        println!("uploaded s3://{bucket}/{key}");
    }
    Ok(())
}
