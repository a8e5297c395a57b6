//! State shared by every connection of one VM: the buffered-bytes budget and the bound on
//! metric label values.
//!
//! All connections of an Envoy worker share one wasm VM, and its linear memory (about 1 GiB at
//! most) never shrinks: if client bytes held by the bridge could grow without a bound across
//! connections, a few hundred unauthenticated clients would abort the VM and with it every
//! connection of the worker. So every buffer the transcoders keep between callbacks is charged
//! to one [`Budget`] before it grows, and a connection that would exceed it is refused alone.
//!
//! Label values (`service`, `method`) come from the network too. Each distinct value defines new
//! metrics in Envoy; [`LabelLimiter`] admits the values the configuration names plus the first
//! few seen, and maps every other one to [`OTHER`], counting how often it did.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

/// The label value that stands for every value past the limit.
pub const OTHER: &str = "other";

/// Bytes the connections of one VM may hold between callbacks.
#[derive(Debug)]
pub struct Budget {
    limit: Cell<usize>,
    used: Cell<usize>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: Cell::new(limit),
            used: Cell::new(0),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    /// Lowers (never raises) the limit: when several filter configurations share a VM, the
    /// smallest budget wins.
    pub fn restrict(&self, limit: usize) {
        if limit < self.limit.get() {
            self.limit.set(limit);
        }
    }

    /// Charges `more` bytes if they fit with `reserve` bytes to spare; `false` (nothing
    /// charged) if not.
    pub fn try_charge(&self, more: usize, reserve: usize) -> bool {
        match self.used.get().checked_add(more) {
            Some(total) if total <= self.limit.get().saturating_sub(reserve) => {
                self.used.set(total);
                true
            }
            _ => false,
        }
    }

    /// Returns `less` bytes to the budget.
    pub fn release(&self, less: usize) {
        self.used.set(self.used.get().saturating_sub(less));
    }
}

/// Which label values get metrics of their own.
#[derive(Debug)]
pub struct LabelLimiter {
    max_dynamic: Cell<usize>,
    named: RefCell<HashSet<String>>,
    seen: RefCell<HashSet<String>>,
}

impl LabelLimiter {
    /// Admits up to `max_dynamic` values that no configuration names.
    pub fn new(max_dynamic: usize) -> Self {
        Self {
            max_dynamic: Cell::new(max_dynamic),
            named: RefCell::new(HashSet::new()),
            seen: RefCell::new(HashSet::new()),
        }
    }

    /// Values always admitted (a configuration's known services and methods).
    pub fn name(&self, values: impl IntoIterator<Item = String>) {
        self.named.borrow_mut().extend(values);
    }

    /// Lowers (never raises) the number of dynamic values admitted.
    pub fn restrict(&self, max_dynamic: usize) {
        if max_dynamic < self.max_dynamic.get() {
            self.max_dynamic.set(max_dynamic);
        }
    }

    /// `value` itself when admitted, else [`OTHER`] and `true` for "overflowed".
    pub fn admit<'a>(&self, value: &'a str) -> (&'a str, bool) {
        if self.named.borrow().contains(value) {
            return (value, false);
        }
        let mut seen = self.seen.borrow_mut();
        if seen.contains(value) {
            return (value, false);
        }
        if seen.len() < self.max_dynamic.get() {
            seen.insert(value.to_owned());
            return (value, false);
        }
        (OTHER, true)
    }
}

/// Everything shared by the connections of one VM.
#[derive(Debug)]
pub struct VmShared {
    /// Buffered bytes across connections.
    pub budget: Budget,
    /// Bound on `service` label values.
    pub services: LabelLimiter,
    /// Bound on `method` label values (counted across services).
    pub methods: LabelLimiter,
}

impl VmShared {
    /// Shared state with the given limits.
    pub fn new(budget: usize, max_services: usize, max_methods: usize) -> Rc<Self> {
        Rc::new(Self {
            budget: Budget::new(budget),
            services: LabelLimiter::new(max_services),
            methods: LabelLimiter::new(max_methods),
        })
    }

    /// Shared state with the default limits (tests, fuzzing, a single connection).
    pub fn unbounded() -> Rc<Self> {
        Self::new(usize::MAX, usize::MAX, usize::MAX)
    }
}

/// A byte buffer whose capacity is charged to a [`Budget`], consumed from the front in
/// amortised O(1) (an offset, compacted when it passes half the buffer), so that a deep
/// pipeline consumed one small frame at a time costs linear, not quadratic, time.
#[derive(Debug)]
pub struct HeldBytes {
    buf: Vec<u8>,
    start: usize,
    charged: usize,
    shared: Rc<VmShared>,
}

/// A buffer would pass its connection's limit or the VM budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// The connection's own limit.
    Connection,
    /// The VM's budget.
    Vm,
}

impl OverLimit {
    /// The `reason` label of the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Connection => "connection_buffer_limit",
            Self::Vm => "vm_buffer_budget",
        }
    }
}

/// Capacities at or below this are kept when a buffer empties (no churn for small frames).
const KEEP_CAPACITY: usize = 64 << 10;

/// Buffers larger than [`KEEP_CAPACITY`] must leave this share of the budget free (1/8): what
/// large frames, partial or whole, can take never starves the small buffers of ordinary calls,
/// so a healthy client keeps working while attackers fill the VM.
const RESERVE_DIVISOR: usize = 8;

impl HeldBytes {
    /// An empty buffer charged to `shared`'s budget.
    pub fn new(shared: Rc<VmShared>) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            charged: 0,
            shared,
        }
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    /// Number of bytes held.
    pub fn len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` if the result stays within `limit` bytes for this buffer and the VM budget
    /// has room for the capacity needed; nothing changes otherwise.
    pub fn try_extend(&mut self, data: &[u8], limit: usize) -> Result<(), OverLimit> {
        if data.is_empty() {
            return Ok(());
        }
        let held = self.len();
        let wanted = held.checked_add(data.len()).ok_or(OverLimit::Connection)?;
        if wanted > limit {
            return Err(OverLimit::Connection);
        }
        if self.start > 0 && self.buf.len().saturating_add(data.len()) > self.buf.capacity() {
            // Reuse the consumed prefix before asking for more memory.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let capacity = self.buf.capacity();
        let needed = self.buf.len().saturating_add(data.len());
        if needed > capacity {
            // Amortised doubling when the budget allows it, the exact size when only that fits.
            let doubled = needed
                .max(capacity.saturating_mul(2))
                .min(limit.max(needed));
            let budget = &self.shared.budget;
            let reserve = |size: usize| {
                if size > KEEP_CAPACITY {
                    budget.limit() / RESERVE_DIVISOR
                } else {
                    0
                }
            };
            let target =
                if budget.try_charge(doubled.saturating_sub(self.charged), reserve(doubled)) {
                    doubled
                } else if budget.try_charge(needed.saturating_sub(self.charged), reserve(needed)) {
                    needed
                } else {
                    return Err(OverLimit::Vm);
                };
            let charged_now = target.saturating_sub(self.charged);
            if self
                .buf
                .try_reserve_exact(target.saturating_sub(self.buf.len()))
                .is_err()
            {
                self.shared.budget.release(charged_now);
                return Err(OverLimit::Vm);
            }
            self.charged = self.charged.saturating_add(charged_now);
            self.recharge();
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Drops the first `n` bytes held (all of them if `n` is larger).
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
                self.recharge();
            }
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Drops everything held and returns the memory.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.recharge();
    }

    /// Makes the charge equal to the real capacity (the allocator may give more than asked).
    fn recharge(&mut self) {
        let capacity = self.buf.capacity();
        if capacity > self.charged {
            // Already allocated: charge it even past the limit, the next growth is refused.
            let more = capacity.saturating_sub(self.charged);
            if !self.shared.budget.try_charge(more, 0) {
                self.shared
                    .budget
                    .used
                    .set(self.shared.budget.used().saturating_add(more));
            }
        } else {
            self.shared
                .budget
                .release(self.charged.saturating_sub(capacity));
        }
        self.charged = capacity;
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.shared.budget.release(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_checked_before_growth_and_returned() {
        let shared = VmShared::new(1000, 8, 8);
        let mut a = HeldBytes::new(Rc::clone(&shared));
        let mut b = HeldBytes::new(Rc::clone(&shared));
        a.try_extend(&[1; 600], 10_000).unwrap();
        assert!(shared.budget.used() >= 600);
        assert_eq!(b.try_extend(&[2; 600], 10_000), Err(OverLimit::Vm));
        assert!(b.is_empty(), "a refused extension changes nothing");
        assert_eq!(a.try_extend(&[1; 10], 100), Err(OverLimit::Connection));
        a.consume(600);
        assert_eq!(a.len(), 0);
        b.try_extend(&[2; 300], 10_000).unwrap();
        drop(a);
        drop(b);
        assert_eq!(shared.budget.used(), 0);
    }

    #[test]
    fn large_buffers_leave_a_reserve_for_small_ones() {
        let shared = VmShared::new(8 << 20, 8, 8);
        let mut big = Vec::new();
        loop {
            let mut h = HeldBytes::new(Rc::clone(&shared));
            if h.try_extend(&[0; 1 << 20], usize::MAX).is_err() {
                break;
            }
            big.push(h);
        }
        assert_eq!(big.len(), 7, "1 MiB buffers stop short of the last eighth");
        let mut small = HeldBytes::new(Rc::clone(&shared));
        small.try_extend(&[0; 4096], usize::MAX).unwrap();
    }

    #[test]
    fn consuming_from_the_front_keeps_order() {
        let shared = VmShared::unbounded();
        let mut h = HeldBytes::new(shared);
        for i in 0..100u8 {
            h.try_extend(&[i, i], usize::MAX).unwrap();
            h.consume(1);
        }
        let expected: Vec<u8> = (50..100u8).flat_map(|i| [i, i]).collect();
        assert_eq!(h.as_slice(), &expected[..]);
    }

    #[test]
    fn labels_past_the_limit_become_other() {
        let l = LabelLimiter::new(2);
        l.name(["known".to_owned()]);
        assert_eq!(l.admit("a"), ("a", false));
        assert_eq!(l.admit("b"), ("b", false));
        assert_eq!(l.admit("c"), (OTHER, true));
        assert_eq!(l.admit("a"), ("a", false));
        assert_eq!(l.admit("known"), ("known", false));
    }
}
