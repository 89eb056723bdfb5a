//! The closed loop: a fixed number of users, each sending its next request as soon as its
//! previous one ended. Throughput follows the target's speed.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::Shared;

/// A user whose request failed waits this long before starting over, so that a target that
/// fails instantly is not hammered in a tight loop.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);

/// Runs `users` users until the window closes.
pub(super) async fn run(shared: Arc<Shared>, users: usize) {
    let mut tasks = JoinSet::new();
    for user in 0..users as u64 {
        tasks.spawn(user_loop(shared.clone(), user, users as u64));
    }
    while tasks.join_next().await.is_some() {}
}

/// User `user` of `users` stays in group `user` (modulo the group count) and runs the
/// conversations numbered `user`, `user + users`, `user + 2 * users`, ... one after another,
/// so each target sees the same conversations from the same users.
async fn user_loop(shared: Arc<Shared>, user: u64, users: u64) {
    let mut id = user;
    let mut conv = shared.workload.conversation(id, user);
    while let Some(counted) = shared.admit() {
        let ok = shared.send(&mut conv, counted).await;
        if !ok || conv.is_finished() {
            id += users;
            conv = shared.workload.conversation(id, user);
        }
        if !ok {
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
}
