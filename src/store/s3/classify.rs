//! SDK errors classified into [`StoreError`]: what a 404 means for the
//! operation, throttling with its Retry-After, credential problems told apart
//! from plain denials, and network failures reduced to the OS error a
//! person can act on.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// A sent request's outcome in the store's terms.
pub(super) async fn sent<T, E>(
    request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    missing: Missing,
) -> Result<T, StoreError>
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    request.await.map_err(|e| classify(e, missing))
}

/// What a 404 means for the operation at hand.
#[derive(Clone, Copy)]
pub(super) enum Missing {
    Bucket,
    Object,
}

pub(super) fn classify<E>(err: SdkError<E, HttpResponse>, missing: Missing) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_owned();
            let message = se.err().message().unwrap_or("").to_owned();
            let detail = if code.is_empty() {
                format!("HTTP {status}")
            } else {
                code.clone()
            };
            // Some stores (Garage) answer a bad signature or an unknown key
            // with a plain AccessDenied; the message tells them apart.
            let lower = message.to_ascii_lowercase();
            let credential_problem = lower.contains("signature")
                || lower.contains("access key")
                || lower.contains("no such key")
                || lower.contains("invalid key");
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => StoreError::NoSuchBucket,
                (_, "NoSuchKey") => StoreError::NotFound,
                (404, _) => match missing {
                    Missing::Bucket => StoreError::NoSuchBucket,
                    Missing::Object => StoreError::NotFound,
                },
                (412, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed,
                // Two conditional writes of one key at once: AWS asks to
                // retry, and the retry meets the winner's condition.
                (409, "ConditionalRequestConflict") => {
                    StoreError::Unavailable(format!("{detail}: {message}"))
                }
                (
                    _,
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "AuthorizationHeaderMalformed",
                ) => StoreError::BadCredentials(detail),
                (403, _) if credential_problem => {
                    StoreError::BadCredentials(format!("{detail}: {message}"))
                }
                (403, _) => StoreError::AccessDenied(detail),
                (503 | 429, _) | (_, "SlowDown" | "Throttling" | "ThrottlingException") => {
                    let retry_after = se
                        .raw()
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    StoreError::Throttled(format!("{detail}: {message}"), retry_after)
                }
                (500..=599, _) | (_, "RequestTimeout" | "InternalError") => {
                    StoreError::Unavailable(format!("{detail}: {message}"))
                }
                _ => StoreError::Other(format!("{detail}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => StoreError::Timeout(root_cause(&err)),
        // The response arrived but could not be read or parsed (a body cut
        // short, a malformed listing page): worth another attempt.
        SdkError::ResponseError(_) => StoreError::Malformed(root_cause(&err)),
        SdkError::DispatchFailure(df) if df.is_timeout() => StoreError::Timeout(root_cause(&err)),
        SdkError::DispatchFailure(df) if df.is_io() => StoreError::Unreachable(root_cause(&err)),
        SdkError::DispatchFailure(_) => {
            let text = DisplayErrorContext(&err).to_string();
            if text.contains("credentials") {
                StoreError::NoCredentials(root_cause(&err))
            } else {
                StoreError::Unreachable(root_cause(&err))
            }
        }
        _ => StoreError::Other(DisplayErrorContext(&err).to_string()),
    }
}

/// The innermost error message: for network failures this is the OS error
/// ("Connection refused"), which is what a person can act on.
pub(super) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    // Errors are reported on one line; some providers format theirs over several.
    current
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
