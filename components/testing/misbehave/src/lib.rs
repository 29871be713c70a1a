//! A normalizer that misbehaves when the request asks it to, and otherwise
//! acts as the events normalizer. The `x-misbehave` header picks the fault:
//! `trap` panics, `loop` never returns, `alloc` allocates without bound,
//! `huge` returns a plan of 100 MB, `unstorable` a plan built by hand whose
//! second event holds a number PostgreSQL cannot store.

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
                "unstorable" => {
                    let row = |event: u32, payload: &str| Row {
                        event,
                        values: vec![
                            Value::uuid(u128::from(event) + 1 + (u128::from(request.received_at as u64) << 32)),
                            Value::Text("unstorable".into()),
                            Value::Timestamptz(request.received_at),
                            Value::Jsonb(payload.into()),
                        ],
                    };
                    Ok(Outcome {
                        events: 2,
                        plans: vec![UpsertPlan {
                            template: None,
                            table: sluice_events::TABLE.into(),
                            columns: ["event_id", "event_type", "occurred_at", "payload"].map(String::from).to_vec(),
                            conflict: Conflict::DoNothing,
                            rows: vec![row(0, r#"{"n":1}"#), row(1, r#"{"n":1e200000}"#)],
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
