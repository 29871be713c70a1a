//! A normalizer that misbehaves when the request asks it to, and otherwise
//! acts as the events normalizer. The `x-misbehave` header picks the fault:
//! `trap` panics, `loop` never returns, `alloc` allocates without bound,
//! `huge` returns a plan of 100 MB.

#[cfg(target_family = "wasm")]
mod component {
    use sluice_sdk::{Conflict, Row, UpsertPlan, Value};

    wit_bindgen::generate!({
        world: "normalizer",
        path: "../../../wit",
        with: { "sluice:ingest/types@0.2.0": sluice_sdk::types },
    });

    struct Misbehave;

    impl Guest for Misbehave {
        fn tables() -> Vec<Table> {
            sluice_events::tables()
        }

        fn handle(request: Request) -> Result<Outcome, RequestError> {
            match request.header("x-misbehave").unwrap_or("") {
                "trap" => panic!("misbehaving on purpose"),
                "loop" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "huge" => {
                    let text = "x".repeat(1 << 20);
                    let rows = (0..100).map(|_| Row { event: 0, values: vec![Value::Text(text.clone())] }).collect();
                    Ok(Outcome {
                        events: 1,
                        plans: vec![UpsertPlan {
                            template: None,
                            table: sluice_events::TABLE.into(),
                            columns: vec!["source".into()],
                            conflict: Conflict::DoNothing,
                            rows,
                        }],
                        rejections: vec![],
                    })
                }
                _ => sluice_events::handle(&request),
            }
        }
    }

    export!(Misbehave);
}
