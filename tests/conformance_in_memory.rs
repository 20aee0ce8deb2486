//! The storage conformance suite, run on `InMemoryStorage` with a manual clock.

use std::time::Duration;

use lighthouse_lease::clock::ManualClock;
use lighthouse_lease::testkit::Harness;
use lighthouse_lease::InMemoryStorage;

struct MemoryHarness(ManualClock);

impl Harness for MemoryHarness {
    type Storage = InMemoryStorage;

    async fn storage(&self) -> InMemoryStorage {
        InMemoryStorage::with_clock(self.0.clone())
    }

    async fn advance(&self, _: &InMemoryStorage, by: Duration) {
        self.0.advance(by);
    }
}

lighthouse_lease::conformance_suite!(MemoryHarness(ManualClock::new()));
