//! The tunnel caps, a pure core: open tunnels in all and per device.

use std::collections::HashMap;
use std::sync::Arc;

/// Why a tunnel was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapRefusal {
    /// The gateway holds its most tunnels.
    Full,
    /// The device holds its most tunnels.
    DeviceFull,
}

/// Open tunnels in all and per device, against their caps.
#[derive(Debug)]
pub(crate) struct Caps {
    max_total: usize,
    max_per_device: usize,
    open: usize,
    per_device: HashMap<Arc<str>, usize>,
}

impl Caps {
    /// No tunnel open yet.
    pub fn new(max_total: usize, max_per_device: usize) -> Self {
        Caps {
            max_total,
            max_per_device,
            open: 0,
            per_device: HashMap::new(),
        }
    }

    /// Why a new tunnel of `device` would be refused now, if it would (the
    /// gateway's cap first: a full gateway says so whoever asks).
    pub fn refusal(&self, device: &str) -> Option<CapRefusal> {
        if self.open >= self.max_total {
            return Some(CapRefusal::Full);
        }
        let n = self.per_device.get(device).copied().unwrap_or(0);
        (n >= self.max_per_device).then_some(CapRefusal::DeviceFull)
    }

    /// Counts a new tunnel of `device`, unless a cap is reached.
    pub fn admit(&mut self, device: &Arc<str>) -> Result<(), CapRefusal> {
        if let Some(refusal) = self.refusal(device) {
            return Err(refusal);
        }
        *self.per_device.entry(device.clone()).or_insert(0) += 1;
        self.open += 1;
        Ok(())
    }

    /// Counts a tunnel of `device` as ended; devices with none are
    /// forgotten.
    pub fn release(&mut self, device: &str) {
        let Some(n) = self.per_device.get_mut(device) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.per_device.remove(device);
        }
        self.open = self.open.saturating_sub(1);
    }

    /// Open tunnels in all.
    pub fn open(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn caps_count_tunnels_in_all_and_per_device() {
        let mut caps = Caps::new(3, 2);
        let (a, b, c) = (dev("a"), dev("b"), dev("c"));
        assert_eq!(caps.admit(&a), Ok(()));
        assert_eq!(caps.admit(&a), Ok(()));
        assert_eq!(caps.refusal("a"), Some(CapRefusal::DeviceFull));
        assert_eq!(caps.admit(&a), Err(CapRefusal::DeviceFull));
        assert_eq!(caps.admit(&b), Ok(()));
        assert_eq!(caps.open(), 3);
        assert_eq!(caps.refusal("c"), Some(CapRefusal::Full));
        assert_eq!(
            caps.admit(&c),
            Err(CapRefusal::Full),
            "the gateway's cap first"
        );
        caps.release("a");
        assert_eq!(caps.open(), 2);
        assert_eq!(caps.refusal("c"), None);
        assert_eq!(caps.admit(&c), Ok(()));
        assert_eq!(caps.admit(&a), Err(CapRefusal::Full));
    }

    #[test]
    fn released_devices_are_forgotten_and_unknown_releases_change_nothing() {
        let mut caps = Caps::new(10, 1);
        assert_eq!(caps.admit(&dev("a")), Ok(()));
        caps.release("a");
        caps.release("a");
        caps.release("nobody");
        assert_eq!(caps.open(), 0);
        assert!(caps.per_device.is_empty());
        assert_eq!(caps.admit(&dev("a")), Ok(()));
    }
}
