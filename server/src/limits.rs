//! Limits that keep one peer from taking the relay from everyone else.
//!
//! - **Message size**: a frame larger than [`Limits::max_message`] is refused with an `error`
//!   and the connection closed (1009), before it is decoded.
//! - **Rate per connection**: token buckets for messages and bytes. An honest device syncing
//!   weeks of work sends a handful of large messages and then small ones; a peer over the rate
//!   is told so and disconnected, and reconnects later with its data intact.
//! - **Quota per person**: documents a person may create and bytes of changes the relay
//!   stores from them. Kept in the store (`usage`), so a restart does not reset them.
//! - **Refusals per device**: a peer that keeps sending changes the relay refuses would fill
//!   the quarantine and keep the hub busy checking them. Each device has a bucket of refusals
//!   ([`Limits::refusal_burst`], refilled at [`Limits::refusals_per_second`]) that reconnecting
//!   does not reset; when it is empty the connection is closed and new ones are refused until
//!   it refills. The bytes of refused changes also count toward the person's byte quota, so
//!   the quarantine cannot grow without bound.

use std::time::Instant;

/// The relay's limits; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest message, in bytes.
    pub max_message: usize,
    /// Messages per second a connection may keep up.
    pub messages_per_second: f64,
    /// Messages a connection may send at once above that rate.
    pub message_burst: f64,
    /// Bytes per second a connection may keep up.
    pub bytes_per_second: f64,
    /// Bytes a connection may send at once above that rate.
    pub byte_burst: f64,
    /// Documents one person may create.
    pub max_documents_per_person: i64,
    /// Bytes of changes the relay stores from one person.
    pub max_bytes_per_person: i64,
    /// Refused changes a device may send at once (see the module documentation).
    pub refusal_burst: f64,
    /// Refused changes per second a device may keep up.
    pub refusals_per_second: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message: 64 * 1024 * 1024,
            messages_per_second: 200.0,
            message_burst: 2000.0,
            bytes_per_second: 4.0 * 1024.0 * 1024.0,
            byte_burst: 128.0 * 1024.0 * 1024.0,
            max_documents_per_person: 1000,
            max_bytes_per_person: 2 * 1024 * 1024 * 1024,
            refusal_burst: 1000.0,
            refusals_per_second: 1.0,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take `n` tokens; false (and nothing taken) if there are not enough.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Why a connection hit a limit: the text of the `error` sent before closing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitHit {
    /// A message over the size limit.
    #[error("message_too_large: a message of {size} bytes is over the limit of {max} bytes")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Too many messages too fast.
    #[error("rate_limited: more than {rate} messages per second; reconnect later")]
    Messages {
        /// The sustained rate allowed.
        rate: u64,
    },
    /// Too many bytes too fast.
    #[error("rate_limited: more than {rate} bytes per second; reconnect later")]
    Bytes {
        /// The sustained rate allowed.
        rate: u64,
    },
    /// The person created as many documents as allowed.
    #[error("quota_exceeded: {person} created {used} documents; the limit is {max}")]
    Documents {
        /// Who.
        person: String,
        /// How many so far.
        used: i64,
        /// The limit.
        max: i64,
    },
    /// The person stored as many bytes as allowed.
    #[error("quota_exceeded: the relay stores {used} bytes of changes from {person}; the limit is {max}")]
    StoredBytes {
        /// Who.
        person: String,
        /// How many so far.
        used: i64,
        /// The limit.
        max: i64,
    },
    /// Too many refused changes from one device.
    #[error("too_many_refusals: this device sent more changes the relay refuses than it allows ({burst} at once, then {rate} per second); retry later")]
    Refusals {
        /// The burst allowed.
        burst: u64,
        /// The sustained rate allowed.
        rate: f64,
    },
}

impl LimitHit {
    /// The WebSocket close code: 1009 for size, 1008 (policy) for the others.
    pub fn close_code(&self) -> u16 {
        match self {
            LimitHit::MessageTooLarge { .. } => 1009,
            _ => 1008,
        }
    }

    /// The close reason (short: a close frame holds 123 bytes).
    pub fn close_reason(&self) -> &'static str {
        match self {
            LimitHit::MessageTooLarge { .. } => "message too large",
            LimitHit::Messages { .. } | LimitHit::Bytes { .. } => "rate limited",
            LimitHit::Documents { .. } | LimitHit::StoredBytes { .. } => "quota exceeded",
            LimitHit::Refusals { .. } => "too many refused changes",
        }
    }
}

/// One connection's buckets.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    messages: Bucket,
    bytes: Bucket,
}

impl ConnLimits {
    /// Fresh buckets for a new connection.
    pub fn new(limits: &Limits, now: Instant) -> ConnLimits {
        ConnLimits {
            messages: Bucket::new(limits.messages_per_second, limits.message_burst, now),
            bytes: Bucket::new(limits.bytes_per_second, limits.byte_burst, now),
        }
    }

    /// Account for one incoming message of `size` bytes.
    pub fn admit(&mut self, limits: &Limits, size: usize, now: Instant) -> Result<(), LimitHit> {
        if size > limits.max_message {
            return Err(LimitHit::MessageTooLarge {
                size,
                max: limits.max_message,
            });
        }
        if !self.messages.take(1.0, now) {
            return Err(LimitHit::Messages {
                rate: limits.messages_per_second as u64,
            });
        }
        if !self.bytes.take(size as f64, now) {
            return Err(LimitHit::Bytes {
                rate: limits.bytes_per_second as u64,
            });
        }
        Ok(())
    }
}

/// Each device's bucket of refused changes, kept across its connections.
#[derive(Debug, Default)]
pub struct DeviceRefusals {
    buckets: std::collections::HashMap<String, Bucket>,
}

impl DeviceRefusals {
    fn bucket(&mut self, limits: &Limits, device: &str, now: Instant) -> &mut Bucket {
        self.buckets
            .entry(device.to_string())
            .or_insert_with(|| Bucket::new(limits.refusals_per_second, limits.refusal_burst, now))
    }

    /// Count `n` refused changes of `device`; the limit it broke if its bucket ran out.
    pub fn charge(
        &mut self,
        limits: &Limits,
        device: &str,
        n: usize,
        now: Instant,
    ) -> Result<(), LimitHit> {
        let bucket = self.bucket(limits, device, now);
        if bucket.take(n as f64, now) {
            Ok(())
        } else {
            // Empty it: the device waits for the refill whatever it sends next.
            let left = bucket.tokens;
            bucket.take(left, now);
            Err(LimitHit::Refusals {
                burst: limits.refusal_burst as u64,
                rate: limits.refusals_per_second,
            })
        }
    }

    /// Whether `device` may open a connection: its bucket holds at least one refusal.
    pub fn may_connect(&mut self, limits: &Limits, device: &str, now: Instant) -> bool {
        self.bucket(limits, device, now).take(0.0, now);
        self.bucket(limits, device, now).tokens >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(b.take(1.0, t0));
        }
        assert!(!b.take(1.0, t0));
        assert!(b.take(1.0, t0 + Duration::from_millis(100)));
        assert!(!b.take(1.0, t0 + Duration::from_millis(100)));
        // Refills up to the burst only.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(1.0, later));
        }
        assert!(!b.take(1.0, later));
    }

    #[test]
    fn refusals_are_counted_per_device_across_connections() {
        let limits = Limits {
            refusal_burst: 3.0,
            refusals_per_second: 1.0,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut r = DeviceRefusals::default();
        assert!(r.charge(&limits, "tablet", 2, t0).is_ok());
        assert!(r.may_connect(&limits, "tablet", t0));
        assert_eq!(
            r.charge(&limits, "tablet", 2, t0)
                .map_err(|e| e.to_string()),
            Err(
                "too_many_refusals: this device sent more changes the relay refuses than it \
                 allows (3 at once, then 1 per second); retry later"
                    .into()
            )
        );
        // A new connection does not start afresh; the refill does.
        assert!(!r.may_connect(&limits, "tablet", t0));
        assert!(r.may_connect(&limits, "other", t0));
        assert!(r.may_connect(&limits, "tablet", t0 + Duration::from_secs(2)));
    }

    #[test]
    fn each_limit_names_itself() {
        let limits = Limits {
            max_message: 100,
            messages_per_second: 1.0,
            message_burst: 2.0,
            bytes_per_second: 1.0,
            byte_burst: 150.0,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut c = ConnLimits::new(&limits, t0);
        assert_eq!(
            c.admit(&limits, 101, t0).map_err(|e| e.to_string()),
            Err("message_too_large: a message of 101 bytes is over the limit of 100 bytes".into())
        );
        assert!(c.admit(&limits, 100, t0).is_ok());
        assert_eq!(
            c.admit(&limits, 100, t0).map_err(|e| e.to_string()),
            Err("rate_limited: more than 1 bytes per second; reconnect later".into())
        );
        assert_eq!(c.admit(&limits, 1, t0), Err(LimitHit::Messages { rate: 1 }));
    }
}
