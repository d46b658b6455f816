//! Test hosts on one Linux machine: each host a network namespace, joined
//! by links that can be cut and restored, or by a user-space delay line
//! that adds delay, loss and a rate limit (this kernel has no `netem`).
//! Multi-host tests build a [`Lab`] from a [`Topology`]; benchmarks and
//! scripts drive the `httvps-netlab` binary, which prints the lab as JSON.
//!
//! Map of the crate:
//! - [`topology`]: hosts, links, delay lines and routes, as asked for.
//! - [`plan`]: a topology checked, with its addresses, names and routes
//!   decided (pure, tested without namespaces).
//! - [`lab`]: builds a topology as namespaces, runs things inside hosts,
//!   cuts links, tears everything down on drop.
//! - [`delay_line`]: the TUN-to-TUN forwarder threads.
//! - [`shaper`]: what a line does to each packet (delay, loss, rate), as a
//!   pure function of arrival time.
//! - [`netns`]: namespace primitives, the availability probe for tests and
//!   the sweep of leftovers.
//! - [`relay`]: a TCP relay from inside a host to a service outside the lab.
//! - `cmd`: running iproute2; `sys`: the TUN ioctls and the line threads'
//!   scheduling class, the crate's only unsafe code.
//!
//! Everything needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`; call
//! [`netns::available`] first and skip when it says no.

#![warn(missing_docs)]

mod cmd;
pub mod delay_line;
pub mod error;
pub mod lab;
pub mod netns;
pub mod plan;
pub mod relay;
pub mod shaper;
mod sys;
pub mod topology;

pub use delay_line::{DirectionCounts, LineCounts};
pub use error::{Error, Result};
pub use lab::{HostProcess, Lab, LabInfo};
pub use shaper::LineParams;
pub use topology::{Subnet, Topology};
