//! Child processes that end with the test, pass or fail: each runs in its
//! own process group, and the whole group (plugins the child started
//! included) is killed when the handle is dropped.

use std::ops::{Deref, DerefMut};

/// A child process leading its own process group.
pub struct GroupChild {
    child: tokio::process::Child,
    pgid: Option<i32>,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<GroupChild> {
        let child = cmd.process_group(0).kill_on_drop(true).spawn()?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok(GroupChild { child, pgid })
    }

    /// Kills the whole group (SIGKILL) and reaps the leader.
    pub async fn kill_group(&mut self) {
        self.signal_group();
        let _ = self.child.wait().await;
    }

    fn signal_group(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The id is not reused while any member of the group lives;
            // once all are gone this fails with ESRCH, which is fine.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Deref for GroupChild {
    type Target = tokio::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl DerefMut for GroupChild {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.signal_group();
    }
}
