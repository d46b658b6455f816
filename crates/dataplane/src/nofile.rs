//! The open-file limit: every tunnel holds descriptors (two in a gateway,
//! two to four in a node), and service managers start processes with a
//! soft limit of 1,024 while allowing far more, which would cap a gateway
//! at a few hundred tunnels long before its connection budget.

/// Raises the soft open-file limit to the hard one, so the connection
/// budget, not the descriptor table, is what sheds load. Returns the limit
/// in force.
pub fn raise() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let before = lim.current;
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            return before;
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    tracing::debug!(nofile.before = before, nofile.now = now, "open-file limit");
    now
}
