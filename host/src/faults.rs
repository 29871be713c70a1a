//! Failpoints: named places in the write path where the tests inject
//! faults, to prove that no step can lose an acknowledged event. They are
//! the `fail` crate's, built in only with the `failpoints` feature (which
//! the tests enable, never a release build) and set by the `FAILPOINTS`
//! environment variable, e.g. `FAILPOINTS='write-after-commit=20%return'`.
//! Without the feature each is nothing. docs/operations.md lists them.

/// Whether the failpoint `name` fires now (set to `return`).
pub fn fires(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        let fired = fail::eval(name, |_| ()).is_some();
        if fired {
            tracing::warn!("failpoint {name} fired");
        }
        fired
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// When `name` fires, ends `client`'s session on the server, as a lost
/// connection would, and returns the driver's error for it.
pub async fn lose_connection(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    if fires(name) {
        // (`fires` logged it.) The session ends as a lost connection would.
        client.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").await?;
        client.batch_execute("SELECT").await?; // (the session is gone: an error)
    }
    Ok(())
}

/// Sets up the failpoints from `FAILPOINTS`, for the life of the process.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
