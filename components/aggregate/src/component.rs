//! The WebAssembly component: the change-handler exports over this crate.

wit_bindgen::generate!({
    world: "change-handler",
    path: "../../wit",
    with: { "sluice:ingest/types@0.2.0": sluice_sdk::types },
});

/// Every call runs in a fresh instance whose memory is thrown away after
/// it, so a bump allocator that never frees is both correct and the
/// cheapest there is.
#[global_allocator]
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::LeakingAllocator> =
    // SAFETY: a component instance runs on one thread.
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::LeakingAllocator::new()) };

struct Aggregate;

impl Guest for Aggregate {
    fn tables() -> Vec<sluice_sdk::Table> {
        crate::tables()
    }

    fn handle_transaction(tx: sluice_sdk::Transaction) -> Result<Vec<sluice_sdk::UpsertPlan>, String> {
        crate::handle_transaction(&tx)
    }
}

export!(Aggregate);
