//! The glue that turns a component crate's plain functions into the
//! contract's exports, written once for every component.
//!
//! The macros expand in the component crate, so that crate depends (for
//! `target_family = "wasm"`) on `wit-bindgen` and `lol_alloc`. They read the
//! contract from `../../wit` (a crate in `components/<name>`), or from the
//! folder given, relative to the crate's `Cargo.toml`:
//! `export_normalizer!("wit")`.

use crate::UpsertPlan;

/// What a change handler's `handle_transaction` may return: its plans, or
/// a `Result` that may refuse the transaction with a reason.
#[doc(hidden)]
pub trait Handled {
    fn into_result(self) -> Result<Vec<UpsertPlan>, String>;
}

impl Handled for Vec<UpsertPlan> {
    fn into_result(self) -> Result<Vec<UpsertPlan>, String> {
        Ok(self)
    }
}

impl Handled for Result<Vec<UpsertPlan>, String> {
    fn into_result(self) -> Self {
        self
    }
}

/// Exports `tables()` and `handle(&Request)` of the module it is invoked in
/// (the crate root) as the `normalizer` world. Invoke it once, compiled only
/// for wasm.
#[macro_export]
macro_rules! export_normalizer {
    () => {
        $crate::export_normalizer!("../../wit");
    };
    ($wit:tt) => {
        mod component {
            $crate::__component_prelude!("normalizer", $wit);

            struct Component;

            impl Guest for Component {
                fn tables() -> Vec<sluice_sdk::Table> {
                    super::tables()
                }

                fn handle(request: sluice_sdk::Request) -> Result<sluice_sdk::Outcome, sluice_sdk::RequestError> {
                    super::handle(&request)
                }
            }

            export!(Component);
        }
    };
}

/// Exports `tables()` and `handle_transaction(&Transaction)` (returning the
/// plans, or a `Result` of them) of the module it is invoked in (the crate
/// root) as the `change-handler` world. Invoke it once, compiled only for
/// wasm.
#[macro_export]
macro_rules! export_change_handler {
    () => {
        $crate::export_change_handler!("../../wit");
    };
    ($wit:tt) => {
        mod component {
            $crate::__component_prelude!("change-handler", $wit);

            struct Component;

            impl Guest for Component {
                fn tables() -> Vec<sluice_sdk::Table> {
                    super::tables()
                }

                fn handle_transaction(tx: sluice_sdk::Transaction) -> Result<Vec<sluice_sdk::UpsertPlan>, String> {
                    $crate::component::Handled::into_result(super::handle_transaction(&tx))
                }
            }

            export!(Component);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __component_prelude {
    ($world:tt, $wit:tt) => {
        // The `with` mapping reuses sluice_sdk's types instead of generating
        // copies, so the crate's functions plug in as they are.
        ::wit_bindgen::generate!({
            world: $world,
            path: $wit,
            with: { "sluice:ingest/types@0.2.0": sluice_sdk::types },
        });

        // Every call runs in a fresh instance whose memory is thrown away
        // after it, so a bump allocator that never frees is both correct
        // and the cheapest there is.
        #[global_allocator]
        static ALLOCATOR: ::lol_alloc::AssumeSingleThreaded<::lol_alloc::LeakingAllocator> =
            // SAFETY: a component instance runs on one thread.
            unsafe { ::lol_alloc::AssumeSingleThreaded::new(::lol_alloc::LeakingAllocator::new()) };
    };
}
