//! Uploads local files to a bucket, creating the bucket if needed.
//! Used by scripts/demo.sh to seed sample data; reads credentials from the
//! AWS_* environment variables.
//!
//!   s3put ENDPOINT_URL BUCKET KEY=FILE [KEY=FILE ...]   (split at the last =)
//!   (a KEY ending in '/' with an empty FILE part creates a directory marker)
//!   s3put ENDPOINT_URL BUCKET --many PREFIX COUNT   (COUNT tiny objects PREFIXf000000...)

use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;

#[tokio::main]
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
    let rest: Vec<String> = args.collect();
    if rest.first().map(String::as_str) == Some("--many") {
        let (Some(prefix), Some(count)) = (
            rest.get(1),
            rest.get(2).and_then(|c| c.parse::<usize>().ok()),
        ) else {
            return Err("usage: --many PREFIX COUNT".into());
        };
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..count {
            let (c, b, key, sem) = (
                client.clone(),
                bucket.clone(),
                format!("{prefix}f{i:06}"),
                sem.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                c.put_object()
                    .bucket(b)
                    .key(key)
                    .body(ByteStream::from(vec![b'x'; 10]))
                    .send()
                    .await
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!("uploaded {count} objects under s3://{bucket}/{prefix}");
        return Ok(());
    }
    for pair in rest {
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
