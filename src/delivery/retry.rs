//! When to try a failed delivery again, for every kind: the backoff schedule, `Retry-After`
//! and the give-up rules of a resource's retry policy.

use std::time::{Duration, SystemTime};

use rand::Rng as _;

use crate::api::RetryPolicy;

/// Parses `Retry-After`: delay seconds or an HTTP-date (a past date means now).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate; backoff() caps them anyway.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Delay before the next attempt, after `attempt` attempts were made (>= 1).
///
/// Exponential with full jitter: uniform in `[0, min(initial * 2^(attempt-1), max)]`, so
/// many subscribers failing together do not retry together. `Retry-After` is a floor on
/// that delay, itself capped at `maxBackoffSeconds`: the client chose that as the longest
/// wait between attempts, and a receiver must not be able to park events beyond it (an
/// early retry that meets another 429 just costs one attempt).
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let max_ms = u64::from(policy.max_backoff_seconds.max(1)) * 1000;
    let initial_ms = u64::from(policy.initial_backoff_seconds.max(1)) * 1000;
    // 2^31 s already exceeds any allowed maxBackoffSeconds; clamping avoids overflow.
    let exp = attempt.saturating_sub(1).min(31);
    let ceiling = initial_ms.saturating_mul(1u64 << exp).min(max_ms);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling));
    let max = Duration::from_millis(max_ms);
    match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    }
}

/// True when no further attempt should be made: `maxAttempts` reached, or the event is
/// `maxAgeSeconds` old.
pub fn should_give_up(policy: &RetryPolicy, attempts: u32, event_age: Duration) -> bool {
    attempts >= policy.max_attempts
        || event_age >= Duration::from_secs(u64::from(policy.max_age_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u32, max: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_seconds: initial,
            max_backoff_seconds: max,
            max_age_seconds: 3600,
        }
    }

    #[test]
    fn backoff_doubles_within_full_jitter_bounds_and_caps() {
        let p = policy(2, 30);
        for attempt in 1..=40 {
            let ceiling = Duration::from_secs((2u64 << (attempt - 1).min(20)).min(30));
            for _ in 0..200 {
                let d = backoff(&p, attempt, None);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            }
        }
        // Huge attempt counts neither overflow nor exceed the cap.
        assert!(backoff(&p, u32::MAX, None) <= Duration::from_secs(30));
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        let p = policy(10, 100);
        let samples: Vec<Duration> = (0..2000).map(|_| backoff(&p, 3, None)).collect();
        let ceiling = Duration::from_secs(40);
        assert!(samples.iter().all(|d| *d <= ceiling));
        let low = samples.iter().filter(|d| **d < ceiling / 4).count();
        let high = samples.iter().filter(|d| **d > ceiling * 3 / 4).count();
        // Uniform: about 500 each; far from what a fixed or narrow delay would give.
        assert!(low > 300 && high > 300, "low {low}, high {high}");
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(
            mean > Duration::from_secs(16) && mean < Duration::from_secs(24),
            "{mean:?}"
        );
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_max_backoff() {
        let p = policy(1, 60);
        for _ in 0..100 {
            let d = backoff(&p, 1, Some(Duration::from_secs(20)));
            assert_eq!(d, Duration::from_secs(20));
        }
        // A later attempt's jitter may exceed the floor, never the cap.
        for _ in 0..100 {
            let d = backoff(&p, 7, Some(Duration::from_secs(20)));
            assert!(d >= Duration::from_secs(20) && d <= Duration::from_secs(60));
        }
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn gives_up_after_max_attempts_or_max_age() {
        let p = policy(1, 60);
        assert!(!should_give_up(&p, 1, Duration::ZERO));
        assert!(!should_give_up(&p, 4, Duration::from_secs(3599)));
        assert!(should_give_up(&p, 5, Duration::ZERO));
        assert!(should_give_up(&p, 6, Duration::ZERO));
        assert!(should_give_up(&p, 1, Duration::from_secs(3600)));
        let once = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert!(should_give_up(&once, 1, Duration::ZERO));
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(""), None);
    }
}
