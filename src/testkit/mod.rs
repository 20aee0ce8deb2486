//! The storage conformance suite (feature `testkit`).
//!
//! Every [`crate::Storage`] must behave the same way; this suite is the contract.
//! [`crate::InMemoryStorage`] runs it, the Redis storage runs it, and a third-party
//! adapter can run it too: implement [`Harness`] and invoke
//! [`conformance_suite!`](crate::conformance_suite) in a test file.
//!
//! ```ignore
//! use std::time::Duration;
//! use lighthouse_lease::clock::ManualClock;
//! use lighthouse_lease::testkit::Harness;
//! use lighthouse_lease::InMemoryStorage;
//!
//! struct MemoryHarness(ManualClock);
//!
//! impl Harness for MemoryHarness {
//!     type Storage = InMemoryStorage;
//!     async fn storage(&self) -> InMemoryStorage {
//!         InMemoryStorage::with_clock(self.0.clone())
//!     }
//!     async fn advance(&self, _: &InMemoryStorage, by: Duration) {
//!         self.0.advance(by);
//!     }
//! }
//!
//! // One #[test] per case, in this module:
//! lighthouse_lease::conformance_suite!(MemoryHarness(ManualClock::new()));
//! ```
//!
//! The harness gives each case a fresh, isolated storage and a way to make time
//! pass: storages with an injectable clock move it; storages whose time is
//! elsewhere (Redis uses its own `TIME`) sleep, so their harness should keep
//! [`Harness::short_lease`] and [`Harness::record_grace`] short.
//!
//! # The smallest adapter
//!
//! A storage is [`crate::AdminStorage`] (pools, proxies, consumers: 15 methods)
//! plus [`crate::LeaseStorage`] (acquire, release, extend, the lease reads,
//! cleanup, stats, reports and health checks: 10 required methods). What it may
//! leave out has defaults: `rotate` (release, then acquire), `subscribe_freed`
//! (never notifies), `announce_waiter` (nothing) and `next_expiry` (none), so
//! that waiting acquires poll every 5 s instead of waking on a release. The
//! suite's waiting cases expect a wake-up well before that, and its fair
//! waiting cases a queue of tickets (`take_ticket`, `drop_ticket`,
//! `wait_tickets`: see `lighthouse_lease::fair`): an adapter that keeps the
//! defaults passes the rest (`tests/minimal_adapter.rs` is one).

use std::future::Future;
use std::time::Duration;

use crate::storage::Storage;

pub mod cases;

/// What the suite needs from an adapter's test setup.
pub trait Harness: Send + Sync + 'static {
    /// The storage under test.
    type Storage: Storage;

    /// A fresh, empty storage, isolated from every other case (cases run in parallel).
    fn storage(&self) -> impl Future<Output = Self::Storage> + Send;

    /// Makes `by` pass for `storage`: move its clock, or sleep.
    fn advance(&self, storage: &Self::Storage, by: Duration) -> impl Future<Output = ()> + Send;

    /// The lease length expiry cases use; they then advance a little past it.
    fn short_lease(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// The record grace of the storages [`Harness::storage`] builds (how long a
    /// finished lease's record, and its request id, are kept). Cases that must
    /// outlive it advance past it, so a harness whose `advance` sleeps should
    /// build its storages with a short grace and return it here.
    fn record_grace(&self) -> Duration {
        crate::storage::DEFAULT_RECORD_GRACE
    }
}

#[doc(hidden)]
pub fn __run<F: Future<Output = ()>>(future: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime for the conformance suite: {e}"));
    runtime.block_on(future);
}

/// Generates one `#[test]` per conformance case in the current module.
///
/// `$harness` is an expression (it may use `.await`) that builds a [`Harness`]; it
/// is evaluated once per case.
///
/// ```ignore
/// lighthouse_lease::conformance_suite!(MyHarness::new().await);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            consumer_round_trip,
            default_consumer_is_registered,
            unknown_named_consumer_is_an_error,
            auto_registered_consumer,
            unknown_pool_is_an_error,
            lease_carries_connection_details,
            filter_by_country,
            filter_by_source,
            filter_by_city,
            filter_by_isp,
            filter_by_asn,
            filter_by_exact_location,
            filter_by_radius,
            filter_any_of,
            filter_all_of,
            filter_none_of,
            filter_without_match_returns_none,
            max_concurrency_never_exceeded,
            max_concurrency_never_exceeded_under_contention,
            unlimited_concurrency,
            release_cycle,
            double_release_frees_once,
            release_of_unknown_lease_is_not_found,
            expiry_and_cleanup_count,
            acquire_reclaims_expired_leases,
            release_after_expiry_reports_expired_and_frees_once,
            non_active_proxies_never_leased,
            health_result_applied,
            pool_stats_are_exact,
            selector_first_available_order,
            selector_least_used_order,
            selector_round_robin_order,
            selector_random_spreads_and_respects_capacity,
            selector_lowest_latency_order,
            best_success_picks_the_best_scoring_proxy,
            success_scores_decay_and_belong_to_the_success_order,
            rotate_releases_then_acquires,
            pools_keep_their_declared_indexes,
            undeclared_indexes_select_the_same,
            list_and_get_leases,
            update_proxy_keeps_leases_and_reindexes,
            remove_proxy_and_pool,
            bad_pool_name_is_rejected,
            bad_consumer_name_is_rejected,
            bad_duration_is_rejected,
            bad_filters_are_rejected,
            bad_proxy_fields_are_rejected,
            bulk_add_is_all_or_nothing,
            duplicate_pool_is_rejected,
            fencing_tokens_strictly_increase,
            extend_renews_a_live_lease,
            extend_of_a_lost_lease_fails,
            lost_lease_is_reported_and_its_token_is_stale,
            multi_slot_guard_refuses_only_expired_holders,
            idempotent_acquire_returns_the_same_lease,
            request_id_lives_as_long_as_its_lease_record,
            failure_cools_a_proxy_down_until_it_returns,
            cooldown_backs_off_exponentially_to_its_cap,
            cooldown_delay_is_the_policys_on_every_storage,
            failures_in_a_row_ban_a_proxy_and_success_resets,
            pool_stats_count_cooling_and_banned,
            bad_reports_are_rejected,
            waiting_acquire_is_woken_by_a_release,
            waiting_acquire_gives_up_at_its_timeout,
            waiting_acquires_are_served_in_fifo_order,
            sticky_session_keeps_its_proxy,
            sticky_session_moves_when_its_proxy_cannot_serve,
            sticky_session_ends_after_its_ttl,
            bad_sessions_are_rejected,
            site_failure_rests_a_proxy_for_that_site_only,
            site_failures_in_a_row_ban_for_that_site_until_a_success,
            bad_sites_are_rejected,
            rate_limit_rests_a_proxy_between_leases,
            rate_limit_rest_and_cooldown_end_independently,
            rate_limit_lifts_every_rest_that_is_over,
            fair_tickets_are_served_in_ticket_order,
            lapsed_ticket_stops_blocking_after_its_ttl,
            plain_acquires_do_not_wait_for_tickets,
            a_fair_waiter_served_by_its_request_id_leaves_the_queue,
            fair_waiters_across_managers_are_served_in_ticket_order,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::__run(async {
                    let harness = $harness;
                    $crate::testkit::cases::$case(&harness).await;
                });
            }
        )*
    };
}
