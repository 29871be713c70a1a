//! The WebAssembly component: the contract's exports over this crate.

wit_bindgen::generate!({
    world: "normalizer",
    path: "../../wit",
    with: { "sluice:ingest/types@0.1.0": sluice_sdk::types },
});

struct Events;

impl Guest for Events {
    fn tables() -> Vec<sluice_sdk::Table> {
        crate::tables()
    }

    fn handle(request: sluice_sdk::Request) -> Result<sluice_sdk::Outcome, sluice_sdk::RequestError> {
        crate::handle(&request)
    }
}

export!(Events);
