//! Limits that keep one peer from taking the relay from everyone else.
//!
//! - **Message size**: a frame larger than [`Limits::max_message`] is refused with an `error`
//!   and the connection closed (1009), before it is decoded.
//! - **Rate per connection**: token buckets for messages and bytes. An honest device syncing
//!   weeks of work sends a handful of large messages and then small ones; a peer over the rate
//!   is told so and disconnected, and reconnects later with its data intact.
//! - **Quota per person**: documents a person may create and bytes of changes the relay
//!   stores from them. Kept in the store (`usage`), so a restart does not reset them.
//! - **Refusals per connection**: a peer that keeps sending changes the relay refuses would
//!   fill the quarantine; after [`Limits::max_refused_per_connection`] it is disconnected.

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
    /// Changes refused on one connection before it is closed.
    pub max_refused_per_connection: usize,
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
            max_refused_per_connection: 1000,
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Too many refused changes on one connection.
    #[error("too_many_refusals: {count} changes refused on this connection; it is closed")]
    Refusals {
        /// How many.
        count: usize,
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

/// One connection's buckets and refusal count.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    messages: Bucket,
    bytes: Bucket,
    /// Changes refused on this connection so far.
    pub refused: usize,
}

impl ConnLimits {
    /// Fresh buckets for a new connection.
    pub fn new(limits: &Limits, now: Instant) -> ConnLimits {
        ConnLimits {
            messages: Bucket::new(limits.messages_per_second, limits.message_burst, now),
            bytes: Bucket::new(limits.bytes_per_second, limits.byte_burst, now),
            refused: 0,
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
