//! The WebAssembly component: the contract's two exports over the plain
//! functions of `lib.rs`. Nothing else belongs here.

// Generates the `Guest` trait and `export!` for the world in ../../wit. The
// `with` mapping reuses sluice_sdk's types instead of generating copies, so
// `crate::tables` and `crate::handle` plug in as they are.
wit_bindgen::generate!({
    world: "normalizer",
    path: "../../wit",
    with: { "sluice:ingest/types@0.2.0": sluice_sdk::types },
});

// Each call runs in a fresh instance whose memory is dropped afterwards, so
// a bump allocator that never frees is correct and much cheaper than the
// default one.
#[global_allocator]
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::LeakingAllocator> =
    // SAFETY: a component instance runs on one thread.
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::LeakingAllocator::new()) };

struct PageViews;

impl Guest for PageViews {
    fn tables() -> Vec<sluice_sdk::Table> {
        crate::tables()
    }

    fn handle(request: sluice_sdk::Request) -> Result<sluice_sdk::Outcome, sluice_sdk::RequestError> {
        crate::handle(&request)
    }
}

export!(PageViews);
