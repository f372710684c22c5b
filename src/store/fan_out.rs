//! `FanOut`: many requests of one job (part copies of a big object, the
//! objects of a renamed directory), a bounded number at a time, stopping at
//! the first failure.

use std::future::Future;

use tokio::task::{JoinError, JoinSet};

pub struct FanOut<T, E> {
    running: JoinSet<Result<T, E>>,
    limit: usize,
    done: Vec<T>,
    failure: Option<E>,
    /// What a task that panicked or was cancelled counts as.
    lost: fn(JoinError) -> E,
}

impl<T: Send + 'static, E: Send + 'static> FanOut<T, E> {
    pub fn new(limit: usize, lost: fn(JoinError) -> E) -> Self {
        FanOut {
            running: JoinSet::new(),
            limit: limit.max(1),
            done: Vec::new(),
            failure: None,
            lost,
        }
    }

    /// Starts `task` once fewer than the limit run. After a failure nothing
    /// more is started: the failure is returned (now and by
    /// [`FanOut::finish`]).
    pub async fn spawn(
        &mut self,
        task: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<(), &E> {
        while self.failure.is_none() && self.running.len() >= self.limit {
            self.join_one().await;
        }
        if let Some(e) = &self.failure {
            return Err(e);
        }
        self.running.spawn(task);
        Ok(())
    }

    /// Waits for everything started (a task is never cut off halfway: a
    /// move is not left with its copy made and its source kept); returns
    /// the outputs in the order they finished, or the first failure.
    pub async fn finish(mut self) -> Result<Vec<T>, E> {
        while !self.running.is_empty() {
            self.join_one().await;
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(self.done),
        }
    }

    async fn join_one(&mut self) {
        let Some(joined) = self.running.join_next().await else {
            return;
        };
        match joined {
            Ok(Ok(v)) => self.done.push(v),
            Ok(Err(e)) => {
                self.failure.get_or_insert(e);
            }
            Err(e) => {
                self.failure.get_or_insert((self.lost)(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn runs_at_most_the_limit_and_stops_at_the_first_failure() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut fan: FanOut<usize, String> = FanOut::new(3, |e| e.to_string());
        for i in 0..10 {
            let (running, most) = (running.clone(), most.clone());
            fan.spawn(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            })
            .await
            .unwrap();
        }
        let mut done = fan.finish().await.unwrap();
        done.sort();
        assert_eq!(done, (0..10).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3);

        let mut fan: FanOut<(), String> = FanOut::new(1, |e| e.to_string());
        fan.spawn(async { Err("broken".to_owned()) }).await.unwrap();
        assert_eq!(fan.spawn(async { Ok(()) }).await, Err(&"broken".to_owned()));
        assert_eq!(fan.finish().await, Err("broken".to_owned()));
    }
}
