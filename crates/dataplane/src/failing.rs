//! Runs of failed calls to the control plane, said once: as a run begins
//! (or changes from an outage to a refusal, or back) and as it ends. A
//! machine that logged every failed call wrote thousands of identical
//! lines through an hour's outage.

use std::sync::{Mutex, PoisonError};

/// A run of failed calls of one kind (a heartbeat, a usage report …).
#[derive(Debug, Default)]
pub(crate) struct Failing(Option<bool>);

impl Failing {
    /// A call failed (`refused`: the token was refused); whether to say so.
    pub(crate) fn began(&mut self, refused: bool) -> bool {
        self.0.replace(refused) != Some(refused)
    }

    /// A call worked; whether a run of failures just ended.
    pub(crate) fn ended(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// A [`Failing`] shared by the tasks of one kind of call.
#[derive(Debug, Default)]
pub(crate) struct SharedFailing(Mutex<Failing>);

impl SharedFailing {
    /// See [`Failing::began`].
    pub(crate) fn began(&self, refused: bool) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .began(refused)
    }

    /// See [`Failing::ended`].
    pub(crate) fn ended(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_said_as_it_begins_changes_and_ends() {
        let mut f = Failing::default();
        assert!(!f.ended(), "nothing failed");
        assert!(f.began(true), "the first refusal");
        assert!(!f.began(true), "not every beat");
        assert!(f.began(false), "now an outage");
        assert!(!f.began(false));
        assert!(f.ended(), "works again");
        assert!(!f.ended());
        let shared = SharedFailing::default();
        assert!(shared.began(false) && !shared.began(false) && shared.ended());
    }
}
