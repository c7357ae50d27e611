//! Retrying with capped exponential backoff, for every call that may fail for a moment
//! (store and ledger writes in the pipeline, each call a server store makes).
//!
//! Invariant: only errors that say they are transient are retried, a bounded number of
//! times; the last error is returned as it was.

use std::future::Future;
use std::time::Duration;

/// Whether an error may pass if the call is repeated.
pub trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

/// Calls `call` until it succeeds, fails permanently, or `backoff.attempts` are spent.
pub async fn with_backoff<T, E, F, Fut>(what: &str, backoff: Backoff, mut call: F) -> Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = backoff.first_delay;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < backoff.attempts => {
                tracing::warn!(call = what, attempt, error = %err, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max_delay);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Failure(bool);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (transient: {})", self.0)
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    const QUICK: Backoff = Backoff {
        attempts: 3,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_limit_and_permanent_ones_not_at_all() {
        let calls = AtomicU32::new(0);
        let result: Result<(), Failure> = with_backoff("t", QUICK, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure(true))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), Failure> = with_backoff("t", QUICK, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure(false))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let result = with_backoff("t", QUICK, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Failure(true)),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.unwrap(), 1);
    }
}
