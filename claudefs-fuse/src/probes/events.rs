//! Per-request events from the ring buffer: the filter userspace asks for,
//! decoding the raw records into [`RequestEvent`] with unix-ns times, and
//! the bounded queue they wait in until [`Probes::take_events`].
//!
//! The kernel submits without waking userspace, so the ring is drained on
//! the caller's timer (`Probes::poll`, about every 100 ms); the ring is
//! sized for that (8 MiB, about 130 000 events of [`RING_RECORD_BYTES`];
//! `Probes::load_with_event_ring` picks another size). When it is full
//! the kernel drops the event and counts it (`events_lost`); the request
//! is still counted in the statistics.
//!
//! [`Probes::take_events`]: crate::probes::Probes::take_events

use std::collections::VecDeque;
use std::time::Duration;

use claudefs_ebpf_common::{
    EventConfig, RequestEventRaw, EVENTS_ALL, EVENTS_OFF, EVENTS_ONE_IN, EVENTS_SLOWER_THAN,
};

use crate::clock::MonoToUnix;

/// Bytes one event takes in the ring buffer: the record and the kernel's
/// 8-byte record header (`BPF_RINGBUF_HDR_SZ`), rounded up to 8 bytes as
/// the kernel does. A ring of `n` bytes holds fewer than
/// `n / RING_RECORD_BYTES` events (the producer never fills it whole).
pub const RING_RECORD_BYTES: usize = (size_of::<RequestEventRaw>() + 8).next_multiple_of(8);

/// Which finished requests the kernel writes to the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventFilter {
    /// No events (statistics only). The default.
    #[default]
    Off,
    /// Every request.
    All,
    /// One request in N (counted per CPU); 0 and 1 mean every request.
    OneIn(u32),
    /// Requests that took longer than this.
    SlowerThan(Duration),
}

impl EventFilter {
    /// The config-map entry for this filter, optionally restricted to one
    /// connection (kernel `dev_t`).
    pub fn to_config(self, only_conn: Option<u32>) -> EventConfig {
        let (mode, one_in, slower_than_ns) = match self {
            EventFilter::Off => (EVENTS_OFF, 0, 0),
            EventFilter::All => (EVENTS_ALL, 0, 0),
            EventFilter::OneIn(n) => (EVENTS_ONE_IN, n, 0),
            EventFilter::SlowerThan(d) => (
                EVENTS_SLOWER_THAN,
                0,
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            ),
        };
        EventConfig {
            mode,
            one_in,
            slower_than_ns,
            filter_conn: u32::from(only_conn.is_some()),
            only_conn: only_conn.unwrap_or(0),
        }
    }
}

/// One finished FUSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEvent {
    /// Kernel `dev_t` of the FUSE connection.
    pub conn: u32,
    /// Request id, unique per connection.
    pub unique: u64,
    pub opcode: u32,
    /// Caller process and thread (the context of `fuse_request_send`).
    pub tgid: u32,
    pub tid: u32,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// 0 or a negative errno.
    pub error: i32,
    /// Request length in bytes (header included).
    pub len: u32,
    /// Reply length in bytes (header included).
    pub reply_len: u32,
}

impl RequestEvent {
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// Converts a raw record (monotonic times) with `clock`.
    pub fn from_raw(raw: &RequestEventRaw, clock: &MonoToUnix) -> RequestEvent {
        RequestEvent {
            conn: raw.conn,
            unique: raw.unique,
            opcode: raw.opcode,
            tgid: raw.tgid,
            tid: raw.tid,
            start_unix_ns: clock.to_unix_ns(raw.start_ns),
            end_unix_ns: clock.to_unix_ns(raw.end_ns),
            error: raw.error,
            len: raw.len,
            reply_len: raw.reply_len,
        }
    }
}

/// Decodes one ring-buffer record; `None` if it is too short (never
/// happens with a matching object, but userspace must not trust sizes).
pub fn decode(bytes: &[u8], clock: &MonoToUnix) -> Option<RequestEvent> {
    if bytes.len() < size_of::<RequestEventRaw>() {
        return None;
    }
    // SAFETY: the length was checked above, `RequestEventRaw` is a
    // `#[repr(C)]` struct of plain integers (any bytes are valid), and
    // `read_unaligned` does not require alignment.
    let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RequestEventRaw>()) };
    Some(RequestEvent::from_raw(&raw, clock))
}

/// Events drained from the ring and not yet taken, bounded: when full the
/// oldest are dropped (and counted) so a caller that never takes events
/// cannot grow memory without limit.
#[derive(Debug)]
pub struct EventQueue {
    events: VecDeque<RequestEvent>,
    capacity: usize,
    /// Events dropped from this queue because it was full.
    pub dropped: u64,
    /// Events that went through the queue (taken or still queued).
    pub delivered: u64,
}

impl EventQueue {
    pub fn new(capacity: usize) -> EventQueue {
        EventQueue {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            delivered: 0,
        }
    }

    pub fn push(&mut self, ev: RequestEvent) {
        if self.events.len() >= self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(ev);
        self.delivered += 1;
    }

    pub fn take(&mut self) -> Vec<RequestEvent> {
        self.events.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RequestEventRaw {
        RequestEventRaw {
            conn: 63,
            opcode: 3,
            unique: 42,
            tgid: 100,
            tid: 101,
            start_ns: 1_000,
            end_ns: 21_000_000,
            error: -2,
            len: 56,
            reply_len: 16,
            _pad: 0,
        }
    }

    fn bytes_of(r: &RequestEventRaw) -> Vec<u8> {
        // SAFETY: a plain-integer repr(C) struct without padding, read as
        // bytes for the length of the struct.
        unsafe {
            std::slice::from_raw_parts(
                (r as *const RequestEventRaw).cast::<u8>(),
                size_of::<RequestEventRaw>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_and_converts_times() {
        let clock = MonoToUnix::with_offset(1_000_000_000);
        let ev = decode(&bytes_of(&raw()), &clock).unwrap();
        assert_eq!(ev.conn, 63);
        assert_eq!(ev.unique, 42);
        assert_eq!(ev.opcode, 3);
        assert_eq!((ev.tgid, ev.tid), (100, 101));
        assert_eq!(ev.start_unix_ns, 1_000_001_000);
        assert_eq!(ev.end_unix_ns, 1_021_000_000);
        assert_eq!(ev.duration_ns(), 20_999_000);
        assert_eq!((ev.error, ev.len, ev.reply_len), (-2, 56, 16));
    }

    #[test]
    fn decodes_unaligned_and_rejects_short() {
        let clock = MonoToUnix::with_offset(0);
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&raw()));
        assert_eq!(decode(&buf[1..], &clock).unwrap().unique, 42);
        assert!(decode(&buf[1..20], &clock).is_none());
    }

    #[test]
    fn filter_configs() {
        let c = EventFilter::Off.to_config(None);
        assert_eq!((c.mode, c.filter_conn), (EVENTS_OFF, 0));
        let c = EventFilter::All.to_config(Some(77));
        assert_eq!((c.mode, c.filter_conn, c.only_conn), (EVENTS_ALL, 1, 77));
        let c = EventFilter::OneIn(10).to_config(None);
        assert_eq!((c.mode, c.one_in), (EVENTS_ONE_IN, 10));
        let c = EventFilter::SlowerThan(Duration::from_millis(5)).to_config(None);
        assert_eq!((c.mode, c.slower_than_ns), (EVENTS_SLOWER_THAN, 5_000_000));
        let c = EventFilter::SlowerThan(Duration::MAX).to_config(None);
        assert_eq!(c.slower_than_ns, u64::MAX);
    }

    #[test]
    fn queue_is_bounded() {
        let clock = MonoToUnix::with_offset(0);
        let ev = RequestEvent::from_raw(&raw(), &clock);
        let mut q = EventQueue::new(2);
        for u in 0..5 {
            q.push(RequestEvent { unique: u, ..ev });
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped, 3);
        assert_eq!(q.delivered, 5);
        let taken = q.take();
        assert_eq!(
            taken.iter().map(|e| e.unique).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(q.is_empty());
    }
}
