//! Ownership of background work: every task the server starts belongs to a [`Tasks`] group, which
//! can tell all of them to stop and wait until they have. The server keeps two groups, stopped in
//! order on shutdown: the front doors (accept loops, connections, the MQTT bridge), then the
//! background work (the backend's loops, readiness, autostart), and only then the final save.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A group of owned tasks. Cheap to clone; clones share the group.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a task, handing it the group's stop signal. The task decides where it may stop
    /// (between two writes of a file, say), so it is never cut off in the middle of one.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = make(self.stop.clone());
        self.tracker.spawn(async move {
            task.await;
            tracing::debug!(task = name, "task ended");
        });
    }

    /// Starts a task that may be dropped at any await point when the group stops.
    pub fn spawn_cancellable<Fut>(&self, name: &'static str, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, |stop| async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// The group's stop signal.
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The tracker, for code that spawns many short tasks (one per connection).
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// True once [`Tasks::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tells every task to stop and waits up to `grace` for all of them; false when some were
    /// still running at the end (they are then left to the runtime's shutdown).
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn tasks_stop_at_their_own_safe_point_and_are_waited_for() {
        let tasks = Tasks::new();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        tasks.spawn("writer", |stop| async move {
            _ = started_tx.send(());
            stop.cancelled().await;
            // The "last write" after the signal still completes.
            tokio::task::yield_now().await;
            done.store(true, Ordering::SeqCst);
        });
        tasks.spawn_cancellable("forever", std::future::pending());
        started.await.unwrap();
        assert!(tasks.stop(Duration::from_secs(5)).await, "every task ended");
        assert!(finished.load(Ordering::SeqCst));
        assert!(tasks.is_stopping());
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_reported() {
        let tasks = Tasks::new();
        tasks.spawn("stubborn", |_| std::future::pending());
        assert!(!tasks.stop(Duration::from_millis(20)).await);
    }
}
