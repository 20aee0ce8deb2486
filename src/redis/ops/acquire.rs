//! `lua/acquire.lua`: n acquire requests on one pool in one atomic call.

use std::sync::atomic::{AtomicU64, Ordering};

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{bad, Op};
use crate::error::{Error, Result};
use crate::filters::ProxyFilters;
use crate::redis::codec;
use crate::redis::conn::{Conn, Repeat};
use crate::redis::error::redis_err;
use crate::redis::keys::{self, PoolKeys};
use crate::storage::AcquireRequest;

pub(crate) const OP: Op = Op::new("acquire", include_str!("../../../lua/acquire.lua"), false);

/// Most required index tags sent per request (more only narrow less).
const MAX_TAGS: usize = 64;

/// The longest spec sent: a longer request (a big filter) goes as the full
/// block, so the specs the script keeps (256 per pool) stay small.
const MAX_SPEC: usize = 4096;

/// The specs a storage made before, by hash: a spec goes to the script only
/// from its second use on. The script parses a spec it has not kept and keeps
/// it (256 per pool), which costs more than reading the full block once; a
/// request whose options never repeat (a point filter with new coordinates
/// each time) is thus sent as its full block and leaves the script's specs
/// alone. A direct-mapped table of hashes without a lock: a collision only
/// sends one request as its full block once more.
pub(crate) struct SpecsSeen(Box<[AtomicU64]>);

impl SpecsSeen {
    const SLOTS: usize = 1024;

    pub(crate) fn new() -> Self {
        SpecsSeen((0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect())
    }

    /// Whether `spec` was made before (and notes that it now was).
    fn seen_before(&self, spec: &str) -> bool {
        use std::hash::BuildHasher as _;
        // Never 0, the value of an empty slot.
        let h = foldhash::fast::FixedState::with_seed(0x6c68_7370).hash_one(spec) | 1;
        let slot = &self.0[(h % Self::SLOTS as u64) as usize];
        slot.swap(h, Ordering::Relaxed) == h
    }
}

impl Default for SpecsSeen {
    fn default() -> Self {
        Self::new()
    }
}

/// The first argument of a spec block (no consumer name holds a control
/// character, so it cannot be read as one).
const SPEC_MARK: &str = "\u{1}";

/// The first argument of a full block (as [`SPEC_MARK`]): a block that starts
/// with neither mark is the short block, a consumer name alone.
const FULL_MARK: &str = "\u{2}";

/// A fair waiter's ticket as the script reads it: the number, and how long
/// it is honoured after this attempt (ms). The pool's queue keys go once per
/// call, as `KEYS[3]` and `KEYS[4]` (see [`push_ticket_keys`]).
#[derive(Debug, Clone)]
pub(crate) struct TicketItem {
    pub(crate) number: u64,
    pub(crate) ttl_ms: u64,
}

/// The `KEYS` index of the pool's `P tickets` in a call whose requests hold
/// tickets (`P tickets:until` follows it).
const TICKET_KEYS_AT: usize = 3;

/// The header argument of acquire.lua and rotate.lua (`ARGV[2]`): the most
/// due leases to reclaim, the record grace in ms and the number of requests,
/// as one argument (`STRAIGHT.head` in `lua/_lib_acquire.lua` reads it once).
pub(crate) fn head(reclaim: u32, grace_ms: u64, requests: usize) -> String {
    format!("{reclaim} {grace_ms} {requests}")
}

/// Adds the pool's queue keys (`P tickets`, `P tickets:until`) as `KEYS[3]`
/// and `KEYS[4]` when one of `items` holds a ticket, after `P meta` and
/// `P live`; returns the index of the first per-request key.
pub(crate) fn push_ticket_keys<'a>(
    inv: &mut super::Call,
    pk: &PoolKeys,
    mut items: impl Iterator<Item = &'a AcquireItem>,
) -> usize {
    if items.any(|it| it.ticket.is_some()) {
        inv.key(pk.tickets()).key(pk.ticket_ends());
        TICKET_KEYS_AT + 2
    } else {
        TICKET_KEYS_AT
    }
}

/// One acquire request as the script reads it (a block of its ARGV).
#[derive(Debug, Clone)]
pub(crate) struct AcquireItem {
    pub(crate) consumer: String,
    pub(crate) duration_ms: u64,
    /// The request key's TTL (and a request id's record's, until the lease is
    /// written to the live set): the duration and the record grace.
    pub(crate) ttl_ms: u64,
    pub(crate) selector: &'static str,
    /// The filter as JSON, or empty when there is none.
    pub(crate) filter: String,
    /// The filter is exactly one exact-match attribute: being in that value's
    /// index is the whole test (when the pool indexes the attribute).
    pub(crate) exact: bool,
    pub(crate) request_key: Option<String>,
    /// The sticky session's key, and how long it keeps its proxy (ms).
    pub(crate) session: Option<(String, u64)>,
    /// The key of the site's cooldowns and bans.
    pub(crate) site_key: Option<String>,
    /// A fair waiter's ticket: see [`TicketItem`].
    pub(crate) ticket: Option<TicketItem>,
    pub(crate) tags: Vec<String>,
    /// The request but for its consumer as one argument (see [`Self::spec_of`]),
    /// when it has no request id, is not random and its spec is at most
    /// [`MAX_SPEC`] bytes.
    pub(crate) spec: Option<String>,
}

impl AcquireItem {
    /// The script's view of a request that [`AcquireRequest::validate`] accepted;
    /// `seen` tells whether its spec was sent before (see [`SpecsSeen`]).
    pub(crate) fn new(
        pk: &PoolKeys,
        request: &AcquireRequest,
        grace_ms: u64,
        seen: &SpecsSeen,
    ) -> Result<Self> {
        let duration_ms = u64::try_from(request.duration.as_millis())
            .map_err(|_| Error::InvalidArgument("lease duration overflows".into()))?;
        let mut tags: Vec<String> = Vec::new();
        for (attr, value) in request.filters.required_attributes() {
            let t = keys::tag(attr, &value);
            if !tags.contains(&t) && tags.len() < MAX_TAGS {
                tags.push(t);
            }
        }
        let filter = if request.filters.is_empty() {
            String::new()
        } else {
            codec::filter_json(&request.filters)
        };
        let mut item = AcquireItem {
            consumer: request.consumer_name.to_string(),
            duration_ms,
            ttl_ms: duration_ms + grace_ms,
            selector: request.selector.as_str(),
            filter,
            exact: single_tag_filter(&request.filters),
            request_key: request.request_id.as_deref().map(|r| pk.request(r)),
            session: match &request.session {
                Some(s) => Some((pk.session(&s.id), millis(s.ttl_for(request.duration))?)),
                None => None,
            },
            site_key: request.site.as_ref().map(|s| pk.site(s.as_str())),
            ticket: match &request.ticket {
                Some(t) => Some(TicketItem {
                    number: t.number(),
                    ttl_ms: millis(t.ttl())?,
                }),
                None => None,
            },
            tags,
            spec: None,
        };
        if item.request_key.is_none()
            && item.session.is_none()
            && item.site_key.is_none()
            && item.ticket.is_none()
            && !item.draws()
        {
            let spec = item.spec_of();
            if spec.len() <= MAX_SPEC && seen.seen_before(&spec) {
                item.spec = Some(spec);
            }
        }
        Ok(item)
    }

    /// The spec block's second argument: the full block's fields after the
    /// consumer, joined by newlines (`duration`, `ttl`, `selector`, `filter`,
    /// `exact`, `0` (random), `0` (request key), `0` (session key), `0`
    /// (session ms), `0` (site key), `0`, `0`, `0` (ticket key, number and
    /// ms), tag count, tags). None of them
    /// holds a newline: tags are percent-encoded and the filter JSON escapes
    /// control characters. The script parses a spec once per pool and keeps
    /// what it read, so a request costs it a table look-up instead of eight
    /// arguments to read and check (see `read_request` in `lua/_lib_acquire.lua`).
    fn spec_of(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(32 + self.filter.len());
        let _ = write!(
            s,
            "{}\n{}\n{}\n{}\n{}\n0\n0\n0\n0\n0\n0\n0\n0\n{}",
            self.duration_ms,
            self.ttl_ms,
            self.selector,
            self.filter,
            if self.exact { "1" } else { "0" },
            self.tags.len()
        );
        for t in &self.tags {
            s.push('\n');
            s.push_str(t);
        }
        s
    }

    /// Whether the request draws a random number of its own: `random` picks
    /// with it, `best_success` decides with it whether to explore (see
    /// [`crate::success`]).
    fn draws(&self) -> bool {
        self.selector == "random" || self.selector == "best_success"
    }

    /// Whether the script may read this request as `prev` again with another
    /// consumer (the short block, see `read_request` in `lua/_lib_acquire.lua`):
    /// the same request in every other respect, neither with a request id, and
    /// drawing no number (each such request draws its own).
    fn repeats(&self, prev: &AcquireItem) -> bool {
        self.request_key.is_none()
            && prev.request_key.is_none()
            && self.session.is_none()
            && prev.session.is_none()
            && self.site_key.is_none()
            && prev.site_key.is_none()
            && self.ticket.is_none()
            && prev.ticket.is_none()
            && !self.draws()
            && self.selector == prev.selector
            && self.duration_ms == prev.duration_ms
            && self.ttl_ms == prev.ttl_ms
            && self.exact == prev.exact
            && self.filter == prev.filter
            && self.tags == prev.tags
    }

    /// Appends this request's block, and its request, session and site keys,
    /// if any, as `KEYS[next_key]` on (moving `next_key` past them). `prev` is the
    /// request whose block the script read just before (none for the first): a
    /// request that repeats it is sent as the short block, its consumer alone;
    /// one with a spec as the spec block (mark, consumer, spec).
    pub(crate) fn push(
        &self,
        inv: &mut super::Call,
        next_key: &mut usize,
        prev: Option<&AcquireItem>,
    ) {
        let mut key_of = |key: Option<&String>| match key {
            Some(k) => {
                inv.key(k);
                *next_key += 1;
                *next_key - 1
            }
            None => 0,
        };
        let request_index = key_of(self.request_key.as_ref());
        let session_index = key_of(self.session.as_ref().map(|(k, _)| k));
        let site_index = key_of(self.site_key.as_ref());
        let ticket_index = match self.ticket {
            Some(_) => TICKET_KEYS_AT,
            None => 0,
        };
        if prev.is_some_and(|p| self.repeats(p)) {
            inv.arg(&self.consumer);
            return;
        }
        if let Some(spec) = &self.spec {
            inv.arg(SPEC_MARK).arg(&self.consumer).arg(spec);
            return;
        }
        inv.arg(FULL_MARK)
            .arg(&self.consumer)
            .arg(self.duration_ms)
            .arg(self.ttl_ms)
            .arg(self.selector)
            .arg(&self.filter)
            .arg(if self.exact { "1" } else { "0" })
            .arg(if self.draws() {
                fastrand::u32(..1 << 31)
            } else {
                0
            })
            .arg(request_index)
            .arg(session_index)
            .arg(self.session.as_ref().map_or(0, |(_, ms)| *ms))
            .arg(site_index)
            .arg(ticket_index)
            .arg(self.ticket.as_ref().map_or(0, |t| t.number))
            .arg(self.ticket.as_ref().map_or(0, |t| t.ttl_ms))
            .arg(self.tags.len())
            .arg(&self.tags);
    }
}

/// A duration in whole milliseconds, as the scripts read durations.
fn millis(d: std::time::Duration) -> Result<u64> {
    u64::try_from(d.as_millis()).map_err(|_| Error::InvalidArgument("duration overflows".into()))
}

/// Whether `f` is exactly one attribute compared for equality (`country`,
/// `source`, `city`, `isp` or `asn`).
fn single_tag_filter(f: &ProxyFilters) -> bool {
    let exact = [
        f.country.is_some(),
        f.source.is_some(),
        f.city.is_some(),
        f.isp.is_some(),
        f.asn.is_some(),
    ];
    exact.iter().filter(|set| **set).count() == 1
        && f.latitude.is_none()
        && f.longitude.is_none()
        && f.radius_km.is_none()
        && f.any_of.is_empty()
        && f.all_of.is_empty()
        && f.none_of.is_empty()
}

/// A granted lease, as the script answers it.
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    pub(crate) token: u64,
    pub(crate) acquired_ms: i64,
    pub(crate) expires_ms: i64,
    pub(crate) proxy_json: String,
    pub(crate) pool_id: Uuid,
}

/// One request's reply.
#[derive(Debug, Clone)]
pub(crate) enum AcquireReply {
    Granted(Granted),
    /// Its request id already got the lease with this token.
    Existing(u64),
    /// No available proxy matches.
    None,
    /// The request's ticket is not the head of its pool's queue.
    Queued,
    /// None now, but due leases wait for reclaim: run cleanup, then again.
    Retry,
    /// The selector needs an order the pool does not keep.
    NoOrder(String),
    PoolNotFound,
    Schema(String),
}

impl AcquireReply {
    /// Reads one reply entry: a word, and after a space what goes with it
    /// (see acquire.lua).
    pub(crate) fn parse(entry: &str) -> Result<Self, ParsingError> {
        const WHAT: &str = "acquire.lua";
        let (word, rest) = entry.split_once(' ').unwrap_or((entry, ""));
        let number = |s: &str| s.parse::<u64>().map_err(|e| bad(WHAT, e));
        let signed = |s: &str| s.parse::<i64>().map_err(|e| bad(WHAT, e));
        Ok(match word {
            "OK" => {
                // token, acquired, expires, seq, pool id, then the JSON (which
                // holds spaces: it is the rest).
                let mut f = rest.splitn(6, ' ');
                let mut field = || f.next().ok_or_else(|| bad(WHAT, "too few fields"));
                let token = number(field()?)?;
                let acquired_ms = signed(field()?)?;
                let expires_ms = signed(field()?)?;
                let _seq = number(field()?)?;
                let pool_id = Uuid::parse_str(field()?).map_err(|e| bad(WHAT, e))?;
                let proxy_json = field()?.to_owned();
                AcquireReply::Granted(Granted {
                    token,
                    acquired_ms,
                    expires_ms,
                    proxy_json,
                    pool_id,
                })
            }
            "EXISTING" => AcquireReply::Existing(number(rest)?),
            "NONE" => AcquireReply::None,
            "QUEUED" => AcquireReply::Queued,
            "RETRY" => AcquireReply::Retry,
            "NO_ORDER" => AcquireReply::NoOrder(rest.to_owned()),
            "POOL_NOT_FOUND" => AcquireReply::PoolNotFound,
            "SCHEMA" => AcquireReply::Schema(rest.to_owned()),
            other => return Err(bad(WHAT, other)),
        })
    }
}

/// Every request's reply, in order.
pub(crate) struct Replies(pub(crate) Vec<AcquireReply>);

impl FromRedisValue for Replies {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        super::entries(&v, "acquire.lua")?
            .into_iter()
            .map(AcquireReply::parse)
            .collect::<Result<_, _>>()
            .map(Replies)
    }
}

/// Runs one acquire.lua call for these requests.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    reclaim: u32,
    grace_ms: u64,
    items: &[&AcquireItem],
) -> Result<Vec<AcquireReply>> {
    let mut inv = OP.call();
    inv.key(pk.meta());
    inv.key(pk.live())
        .arg(pk.prefix())
        .arg(head(reclaim, grace_ms, items.len()));
    let mut next_key = push_ticket_keys(&mut inv, pk, items.iter().copied());
    let mut prev: Option<&AcquireItem> = None;
    for it in items {
        it.push(&mut inv, &mut next_key, prev);
        prev = Some(it);
    }
    // With a request id, running a request again returns the lease it got:
    // a batch whose every request has one may be sent again.
    if items.iter().all(|it| it.request_key.is_some()) {
        inv.repeat(Repeat::Always);
    }
    let Replies(out) = inv
        .invoke(conn)
        .await
        .map_err(redis_err("acquire script failed"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::SpecsSeen;

    #[test]
    fn a_spec_counts_as_seen_from_its_second_use() {
        let seen = SpecsSeen::new();
        assert!(!seen.seen_before("300000\n360000\nleast_used\n\n0\n0\n0\n0"));
        assert!(seen.seen_before("300000\n360000\nleast_used\n\n0\n0\n0\n0"));
        assert!(!seen.seen_before("90000\n150000\nleast_used\n\n0\n0\n0\n0"));
        assert!(seen.seen_before("300000\n360000\nleast_used\n\n0\n0\n0\n0"));
    }
}
