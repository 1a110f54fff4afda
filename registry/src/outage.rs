//! Remembering that a registry just gave no answer, so that chunk fetches
//! fail at once for a while instead of each spending its retries.
//!
//! Without this, a guest that touches many uncached chunks while the
//! registry is down waits out every chunk's bounded retries (seconds each)
//! before its EIO, and stalls for minutes. After a fetch finds the
//! registry unreachable (no connection, a timeout, a 5xx or 429 that
//! outlasted the client's retries), fetches to it are refused at once for
//! a rest that starts at [`FIRST_REST`] and doubles up to [`MAX_REST`]; the
//! first fetch after a rest asks the registry again (alone: it starts the
//! next rest for the others), and any answer ends the outage. A refusal,
//! a missing blob or a corrupt answer is an answer.
//!
//! The state machine (`Backoff`) takes the time as arguments, so that its
//! tests set the clock; `Outages` keeps one per registry and logs the
//! transitions: one warning when a registry goes, one info line when it
//! comes back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The first rest after a registry stops answering: long enough that a
/// guest touching many uncached chunks gets its errors at once rather than
/// after each chunk's retries, short enough that a registry restarted
/// (the common outage) is noticed about when a person would try again.
pub const FIRST_REST: Duration = Duration::from_secs(5);

/// The longest rest: a registry down for long is still asked once a
/// minute, so serving resumes within a minute of its return, at the cost
/// of one slow failed fetch a minute while it stays down.
pub const MAX_REST: Duration = Duration::from_secs(60);

/// Whether a fetch may go to the registry; from [`Backoff::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The registry answered last time: fetch.
    Fetch,
    /// The rest is over: this fetch asks the registry again, the others
    /// keep failing at once until it reports.
    Probe,
    /// The registry is resting: fail at once.
    Refuse(Refusal),
}

/// Why a fetch was refused without a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// When the registry was first found unreachable (wall clock).
    pub since: SystemTime,
    /// How long until a fetch asks it again.
    pub retry_in: Duration,
    /// The failure that started the outage.
    pub cause: String,
}

/// One registry's outage, if it has one.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since: SystemTime,
    cause: String,
    /// The current rest.
    rest: Duration,
    /// When the next fetch may ask the registry.
    retry_at: Instant,
}

/// What a reported failure did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The registry was thought reachable: the outage starts, resting this
    /// long.
    WentDown(Duration),
    /// A probe failed: the next rest is this long.
    StillDown(Duration),
    /// A fetch admitted before the outage was found: nothing changes.
    Known,
}

impl Backoff {
    /// Whether a fetch starting at `now` may go to the registry.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        let Some(down) = &mut self.down else {
            return Admit::Fetch;
        };
        if now < down.retry_at {
            return Admit::Refuse(Refusal {
                since: down.since,
                retry_in: down.retry_at - now,
                cause: down.cause.clone(),
            });
        }
        // The others rest on while this one asks; a probe that never
        // reports (its thread gone) costs one rest, not the registry.
        down.retry_at = now + down.rest;
        Admit::Probe
    }

    /// A fetch admitted as `admitted` found the registry unreachable at
    /// `now` (`wall` on the wall clock), failing with `cause`.
    pub(crate) fn failed(
        &mut self,
        admitted: &Admit,
        now: Instant,
        wall: SystemTime,
        cause: &str,
    ) -> Failed {
        match (&mut self.down, admitted) {
            (None, _) => {
                self.down = Some(Down {
                    since: wall,
                    cause: cause.to_owned(),
                    rest: FIRST_REST,
                    retry_at: now + FIRST_REST,
                });
                Failed::WentDown(FIRST_REST)
            }
            (Some(down), Admit::Probe) => {
                down.rest = (down.rest * 2).min(MAX_REST);
                down.retry_at = now + down.rest;
                Failed::StillDown(down.rest)
            }
            (Some(_), _) => Failed::Known,
        }
    }

    /// The registry answered (a success, or a refusal or error that is
    /// the registry's word): the outage, if any, is over; yields when it
    /// began.
    pub(crate) fn answered(&mut self) -> Option<SystemTime> {
        self.down.take().map(|d| d.since)
    }
}

/// The outages of every registry a client (and the clients made from it)
/// fetches chunks from.
#[derive(Debug, Default)]
pub(crate) struct Outages {
    by_registry: Mutex<HashMap<String, Backoff>>,
}

impl Outages {
    fn with<T>(&self, registry: &str, f: impl FnOnce(&mut Backoff) -> T) -> T {
        let mut map = self
            .by_registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(registry.to_owned()).or_default())
    }

    /// See [`Backoff::admit`].
    pub(crate) fn admit(&self, registry: &str) -> Admit {
        self.with(registry, |b| b.admit(Instant::now()))
    }

    /// See [`Backoff::failed`]; logs the start of an outage.
    pub(crate) fn failed(&self, registry: &str, admitted: &Admit, cause: &str) {
        let failed = self.with(registry, |b| {
            b.failed(admitted, Instant::now(), SystemTime::now(), cause)
        });
        match failed {
            Failed::WentDown(rest) => tracing::warn!(
                registry,
                error = cause,
                "registry {registry} is unreachable: chunk fetches from it fail at once \
                 for {} s, then one tries again (every {} s at most)",
                rest.as_secs(),
                MAX_REST.as_secs()
            ),
            // Once per rest at most: the warning above said what goes on.
            Failed::StillDown(rest) => tracing::debug!(
                registry,
                error = cause,
                "registry {registry} still unreachable; next attempt in {} s",
                rest.as_secs()
            ),
            Failed::Known => {}
        }
    }

    /// See [`Backoff::answered`]; logs the end of an outage.
    pub(crate) fn answered(&self, registry: &str) {
        if let Some(since) = self.with(registry, Backoff::answered) {
            tracing::info!(
                registry,
                "registry {registry} answers again (unreachable since {}); chunk fetches resume",
                wall_time(since)
            );
        }
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn wall_time(t: SystemTime) -> String {
    rfc3339(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, for log lines and
/// errors that say when (the civil-from-days algorithm of Howard Hinnant's
/// date library, for the proleptic Gregorian calendar; a date crate for a
/// few messages is not worth its weight).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_428_799), "2026-12-04T23:59:59Z");
    }

    fn refused(a: &Admit) -> &Refusal {
        match a {
            Admit::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The whole cycle on a set clock: down, refused for the rest, one
    /// probe per rest, rests doubling to the cap, an answer ends it.
    #[test]
    fn outage_rests_double_to_the_cap_and_an_answer_ends_it() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let mut b = Backoff::default();
        assert_eq!(b.admit(t0), Admit::Fetch);
        assert_eq!(b.answered(), None, "no outage to end");

        assert_eq!(
            b.failed(&Admit::Fetch, t0, wall, "refused"),
            Failed::WentDown(FIRST_REST)
        );
        let r = b.admit(t0 + S).clone();
        let r = refused(&r);
        assert_eq!(r.since, wall);
        assert_eq!(r.retry_in, FIRST_REST - S);
        assert_eq!(r.cause, "refused");
        // A fetch admitted before the outage fails late: nothing moves.
        assert_eq!(
            b.failed(&Admit::Fetch, t0 + 2 * S, wall + 2 * S, "late"),
            Failed::Known
        );
        assert_eq!(refused(&b.admit(t0 + 2 * S)).retry_in, FIRST_REST - 2 * S);

        // Each rest over: one probe, the others still refused; a failed
        // probe doubles the rest, up to the cap.
        let mut now = t0;
        let mut rest = FIRST_REST;
        let mut rests = Vec::new();
        for _ in 0..8 {
            now += rest;
            assert_eq!(b.admit(now), Admit::Probe);
            assert_eq!(refused(&b.admit(now)).retry_in, rest);
            let later = now + S;
            match b.failed(&Admit::Probe, later, wall, "still refused") {
                Failed::StillDown(next) => rest = next,
                other => panic!("{other:?}"),
            }
            now = later;
            rests.push(rest.as_secs());
            let r = b.admit(now);
            assert_eq!(refused(&r).retry_in, rest);
            assert_eq!(refused(&r).since, wall, "the outage's start stays");
        }
        assert_eq!(rests, [10, 20, 40, 60, 60, 60, 60, 60]);

        // A probe that answers ends the outage, and the next one starts
        // from the first rest again.
        now += rest;
        assert_eq!(b.admit(now), Admit::Probe);
        assert_eq!(b.answered(), Some(wall));
        assert_eq!(b.admit(now), Admit::Fetch);
        assert_eq!(
            b.failed(&Admit::Fetch, now, wall, "refused"),
            Failed::WentDown(FIRST_REST)
        );
    }

    /// A probe whose thread never reports holds the others back for one
    /// rest only.
    #[test]
    fn a_lost_probe_costs_one_rest() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.failed(&Admit::Fetch, t0, SystemTime::UNIX_EPOCH, "timeout");
        assert_eq!(b.admit(t0 + FIRST_REST), Admit::Probe);
        assert!(matches!(b.admit(t0 + FIRST_REST + S), Admit::Refuse(_)));
        assert_eq!(b.admit(t0 + 2 * FIRST_REST), Admit::Probe);
    }

    /// Outages are per registry.
    #[test]
    fn registries_rest_apart() {
        let o = Outages::default();
        o.failed("a:5000", &Admit::Fetch, "refused");
        assert!(matches!(o.admit("a:5000"), Admit::Refuse(_)));
        assert_eq!(o.admit("b:5000"), Admit::Fetch);
        o.answered("a:5000");
        assert_eq!(o.admit("a:5000"), Admit::Fetch);
    }
}
