//! What a failure of PostgreSQL means, and what to do about it.
//!
//! Every part of Sluice that talks to a database (the batching writer, the
//! query API, dead letters and their replay, the change streams) asks
//! [`classify`] and acts on the [`Kind`]'s [`Action`], so that one SQLSTATE
//! is handled the same way everywhere. The table covers every SQLSTATE
//! class of PostgreSQL's errcodes appendix; a code PostgreSQL adds to a
//! class later is handled as its class.

use tokio_postgres::error::SqlState;

/// What a failure is, by SQLSTATE (or the lack of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// No SQLSTATE: the connection could not be made, was lost or closed,
    /// timed out, or no pooled connection came free in time.
    Connection,
    /// The server could not do it now, but may soon: `08` connection
    /// exceptions, `53` insufficient resources, `57` operator intervention
    /// (shutdown, `57P01`–`57P03`), `58` system errors, `XX` internal
    /// errors, `55P03` lock not available, `55006` object in use, `72`
    /// snapshot too old, `40` transaction rollbacks other than the two of
    /// [`Kind::Conflict`], and `25P02`: a transaction aborted by an error
    /// the driver never read, whose statement may succeed on a new
    /// connection.
    Transient,
    /// `40001` serialization failure and `40P01` deadlock: another
    /// transaction won; doing it again may succeed.
    Conflict,
    /// `57014` query canceled: a statement timeout or a cancel request.
    Cancelled,
    /// The rows: `22` data exceptions, `23` integrity constraint
    /// violations, `54` program limits (a value too large), and every
    /// class that says something of the statement or its values rather
    /// than of the server or the destination (`09`, `20`, `21`, `24`,
    /// `26`, `27`, `2D`, `2F`, `34`, `38`, `39`, `3B`, `44`, `55P04`
    /// unsafe enum value use, `HV`, `P0`, and the unexpected `00`–`03`,
    /// `0B`, `0F`, `0Z`). Other rows may be written.
    Data,
    /// `28` invalid authorization: the login was refused (a wrong
    /// password, a role that is gone or may not log in).
    Authorization,
    /// `42501` insufficient privilege.
    Privilege,
    /// An object that is not there: `42P01` table, `42703` column,
    /// `42704` object (a publication, a replication slot, a type), `42883`
    /// function, `42P02` parameter, `3D` database, `3F` schema.
    Undefined,
    /// `25006` read-only SQL transaction: a write where only reads may run
    /// (a standby, or a read-only transaction).
    ReadOnly,
    /// Every other refusal that stays until an operator acts: the rest of
    /// `42` (syntax, access rules), `0A` not supported, the rest of `25`
    /// (invalid transaction state), `2B` dependent privileges, `0L`
    /// invalid grantor, `0P` invalid role, `F0` configuration file errors,
    /// `55000` object not in prerequisite state (a replication slot
    /// invalidated, `wal_level` too low for logical decoding) and `55P02`
    /// a setting that cannot be changed now.
    Refused,
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Try the same again after a pause (with backoff).
    Retry,
    /// Some rows are refused: set them apart and write the others.
    Isolate,
    /// Nothing will succeed until an operator acts: stop, report why, and
    /// try again only seldom.
    Stop,
}

impl Kind {
    /// What to do about a failure of this kind.
    pub fn action(self) -> Action {
        match self {
            Kind::Connection | Kind::Transient | Kind::Conflict | Kind::Cancelled => Action::Retry,
            Kind::Data => Action::Isolate,
            Kind::Authorization | Kind::Privilege | Kind::Undefined | Kind::ReadOnly | Kind::Refused => Action::Stop,
        }
    }

    /// Whether the server could not be reached or could not serve for now
    /// (starting, stopping, out of resources), rather than refusing what
    /// was asked or losing to another transaction.
    pub fn is_unavailable(self) -> bool {
        matches!(self, Kind::Connection | Kind::Transient | Kind::Cancelled)
    }

    /// The kind's name, for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connection => "connection",
            Kind::Transient => "transient",
            Kind::Conflict => "conflict",
            Kind::Cancelled => "cancelled",
            Kind::Data => "data",
            Kind::Authorization => "authorization",
            Kind::Privilege => "privilege",
            Kind::Undefined => "undefined",
            Kind::ReadOnly => "read_only",
            Kind::Refused => "refused",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a failure the server reported with SQLSTATE `code`.
pub fn classify_code(code: &str) -> Kind {
    let class = code.get(..2).unwrap_or(code);
    match (class, code) {
        (_, "40001" | "40P01") => Kind::Conflict,
        (_, "57014") => Kind::Cancelled,
        (_, "55P03" | "55006") => Kind::Transient,
        (_, "25P02") => Kind::Transient,
        (_, "25006") => Kind::ReadOnly,
        (_, "55000" | "55P02") => Kind::Refused,
        (_, "42501") => Kind::Privilege,
        (_, "42P01" | "42703" | "42704" | "42883" | "42P02") => Kind::Undefined,
        ("08" | "40" | "53" | "57" | "58" | "72" | "XX", _) => Kind::Transient,
        ("28", _) => Kind::Authorization,
        ("3D" | "3F", _) => Kind::Undefined,
        ("42" | "0A" | "25" | "2B" | "0L" | "0P" | "F0", _) => Kind::Refused,
        _ => Kind::Data,
    }
}

/// The kind of a failure of tokio-postgres: by its SQLSTATE, or
/// [`Kind::Connection`] when the server sent none.
pub fn classify(e: &tokio_postgres::Error) -> Kind {
    match e.as_db_error() {
        Some(db) => classify_code(db.code().code()),
        None => Kind::Connection,
    }
}

/// The kind of a pool's failure: the server's when it refused the
/// connection, else [`Kind::Connection`] (no connection came free, or
/// opening one timed out).
pub fn classify_pool(e: &deadpool_postgres::PoolError) -> Kind {
    match e {
        deadpool_postgres::PoolError::Backend(e) => classify(e),
        _ => Kind::Connection,
    }
}

/// The kind of the first failure of PostgreSQL or of a pool in a chain of
/// causes (as `anyhow::Error::chain` gives them); `None` when there is none.
pub fn classify_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> Option<Kind> {
    chain.into_iter().find_map(|cause| {
        if let Some(pool) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
            return Some(classify_pool(pool));
        }
        cause.downcast_ref::<tokio_postgres::Error>().map(classify)
    })
}

/// `message (SQLSTATE code)`, or the error as it shows itself.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::IN_FAILED_SQL_TRANSACTION => format!(
            "the transaction was aborted by an error that followed its last statement, such as a statement \
             timeout or a cancel, and was not committed ({}; SQLSTATE 25P02)",
            db.message()
        ),
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every SQLSTATE class of PostgreSQL's errcodes appendix, by a code of
    /// it, with the kind it is and what is done about it.
    const TABLE: &[(SqlState, Kind, Action)] = &[
        // 00 successful completion, 01 warning, 02 no data, 03 SQL statement
        // not yet complete: never errors; handled as the statement's.
        (SqlState::SUCCESSFUL_COMPLETION, Kind::Data, Action::Isolate),
        (SqlState::WARNING, Kind::Data, Action::Isolate),
        (SqlState::NO_DATA, Kind::Data, Action::Isolate),
        (SqlState::SQL_STATEMENT_NOT_YET_COMPLETE, Kind::Data, Action::Isolate),
        // 08 connection exception
        (SqlState::CONNECTION_EXCEPTION, Kind::Transient, Action::Retry),
        (SqlState::CONNECTION_FAILURE, Kind::Transient, Action::Retry),
        (SqlState::PROTOCOL_VIOLATION, Kind::Transient, Action::Retry),
        // 09 triggered action exception
        (SqlState::TRIGGERED_ACTION_EXCEPTION, Kind::Data, Action::Isolate),
        // 0A feature not supported
        (SqlState::FEATURE_NOT_SUPPORTED, Kind::Refused, Action::Stop),
        // 0B invalid transaction initiation
        (SqlState::INVALID_TRANSACTION_INITIATION, Kind::Data, Action::Isolate),
        // 0F locator exception
        (SqlState::LOCATOR_EXCEPTION, Kind::Data, Action::Isolate),
        // 0L invalid grantor, 0P invalid role specification
        (SqlState::INVALID_GRANTOR, Kind::Refused, Action::Stop),
        (SqlState::INVALID_ROLE_SPECIFICATION, Kind::Refused, Action::Stop),
        // 0Z diagnostics exception
        (SqlState::DIAGNOSTICS_EXCEPTION, Kind::Data, Action::Isolate),
        // 20 case not found, 21 cardinality violation (ON CONFLICT touching a row twice)
        (SqlState::CASE_NOT_FOUND, Kind::Data, Action::Isolate),
        (SqlState::CARDINALITY_VIOLATION, Kind::Data, Action::Isolate),
        // 22 data exception
        (SqlState::DATA_EXCEPTION, Kind::Data, Action::Isolate),
        (SqlState::STRING_DATA_RIGHT_TRUNCATION, Kind::Data, Action::Isolate),
        (SqlState::INVALID_TEXT_REPRESENTATION, Kind::Data, Action::Isolate),
        (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, Kind::Data, Action::Isolate),
        // 23 integrity constraint violation
        (SqlState::NOT_NULL_VIOLATION, Kind::Data, Action::Isolate),
        (SqlState::UNIQUE_VIOLATION, Kind::Data, Action::Isolate),
        (SqlState::FOREIGN_KEY_VIOLATION, Kind::Data, Action::Isolate),
        (SqlState::CHECK_VIOLATION, Kind::Data, Action::Isolate),
        // 24 invalid cursor state
        (SqlState::INVALID_CURSOR_STATE, Kind::Data, Action::Isolate),
        // 25 invalid transaction state
        (SqlState::INVALID_TRANSACTION_STATE, Kind::Refused, Action::Stop),
        (SqlState::READ_ONLY_SQL_TRANSACTION, Kind::ReadOnly, Action::Stop),
        (SqlState::IN_FAILED_SQL_TRANSACTION, Kind::Transient, Action::Retry),
        // 26 invalid SQL statement name, 27 triggered data change violation
        (SqlState::INVALID_SQL_STATEMENT_NAME, Kind::Data, Action::Isolate),
        (SqlState::TRIGGERED_DATA_CHANGE_VIOLATION, Kind::Data, Action::Isolate),
        // 28 invalid authorization specification
        (SqlState::INVALID_AUTHORIZATION_SPECIFICATION, Kind::Authorization, Action::Stop),
        (SqlState::INVALID_PASSWORD, Kind::Authorization, Action::Stop),
        // 2B dependent privilege descriptors still exist
        (SqlState::DEPENDENT_PRIVILEGE_DESCRIPTORS_STILL_EXIST, Kind::Refused, Action::Stop),
        // 2D invalid transaction termination, 2F SQL routine exception
        (SqlState::INVALID_TRANSACTION_TERMINATION, Kind::Data, Action::Isolate),
        (SqlState::SQL_ROUTINE_EXCEPTION, Kind::Data, Action::Isolate),
        // 34 invalid cursor name
        (SqlState::INVALID_CURSOR_NAME, Kind::Data, Action::Isolate),
        // 38 external routine exception, 39 external routine invocation exception
        (SqlState::EXTERNAL_ROUTINE_EXCEPTION, Kind::Data, Action::Isolate),
        (SqlState::EXTERNAL_ROUTINE_INVOCATION_EXCEPTION, Kind::Data, Action::Isolate),
        // 3B savepoint exception
        (SqlState::SAVEPOINT_EXCEPTION, Kind::Data, Action::Isolate),
        // 3D invalid catalog name, 3F invalid schema name
        (SqlState::INVALID_CATALOG_NAME, Kind::Undefined, Action::Stop),
        (SqlState::INVALID_SCHEMA_NAME, Kind::Undefined, Action::Stop),
        // 40 transaction rollback
        (SqlState::TRANSACTION_ROLLBACK, Kind::Transient, Action::Retry),
        (SqlState::T_R_SERIALIZATION_FAILURE, Kind::Conflict, Action::Retry),
        (SqlState::T_R_DEADLOCK_DETECTED, Kind::Conflict, Action::Retry),
        (SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN, Kind::Transient, Action::Retry),
        // 42 syntax error or access rule violation
        (SqlState::SYNTAX_ERROR, Kind::Refused, Action::Stop),
        (SqlState::INSUFFICIENT_PRIVILEGE, Kind::Privilege, Action::Stop),
        (SqlState::UNDEFINED_TABLE, Kind::Undefined, Action::Stop),
        (SqlState::UNDEFINED_COLUMN, Kind::Undefined, Action::Stop),
        (SqlState::UNDEFINED_OBJECT, Kind::Undefined, Action::Stop),
        (SqlState::UNDEFINED_FUNCTION, Kind::Undefined, Action::Stop),
        (SqlState::UNDEFINED_PARAMETER, Kind::Undefined, Action::Stop),
        (SqlState::DATATYPE_MISMATCH, Kind::Refused, Action::Stop),
        (SqlState::DUPLICATE_TABLE, Kind::Refused, Action::Stop),
        // 44 WITH CHECK OPTION violation
        (SqlState::WITH_CHECK_OPTION_VIOLATION, Kind::Data, Action::Isolate),
        // 53 insufficient resources
        (SqlState::INSUFFICIENT_RESOURCES, Kind::Transient, Action::Retry),
        (SqlState::DISK_FULL, Kind::Transient, Action::Retry),
        (SqlState::TOO_MANY_CONNECTIONS, Kind::Transient, Action::Retry),
        // 54 program limit exceeded
        (SqlState::PROGRAM_LIMIT_EXCEEDED, Kind::Data, Action::Isolate),
        (SqlState::TOO_MANY_COLUMNS, Kind::Data, Action::Isolate),
        // 55 object not in prerequisite state
        (SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, Kind::Refused, Action::Stop),
        (SqlState::OBJECT_IN_USE, Kind::Transient, Action::Retry),
        (SqlState::LOCK_NOT_AVAILABLE, Kind::Transient, Action::Retry),
        (SqlState::CANT_CHANGE_RUNTIME_PARAM, Kind::Refused, Action::Stop),
        (SqlState::UNSAFE_NEW_ENUM_VALUE_USAGE, Kind::Data, Action::Isolate),
        // 57 operator intervention
        (SqlState::OPERATOR_INTERVENTION, Kind::Transient, Action::Retry),
        (SqlState::QUERY_CANCELED, Kind::Cancelled, Action::Retry),
        (SqlState::ADMIN_SHUTDOWN, Kind::Transient, Action::Retry),
        (SqlState::CRASH_SHUTDOWN, Kind::Transient, Action::Retry),
        (SqlState::CANNOT_CONNECT_NOW, Kind::Transient, Action::Retry),
        (SqlState::DATABASE_DROPPED, Kind::Transient, Action::Retry),
        // 58 system error
        (SqlState::SYSTEM_ERROR, Kind::Transient, Action::Retry),
        (SqlState::IO_ERROR, Kind::Transient, Action::Retry),
        // 72 snapshot failure
        (SqlState::SNAPSHOT_TOO_OLD, Kind::Transient, Action::Retry),
        // F0 configuration file error
        (SqlState::CONFIG_FILE_ERROR, Kind::Refused, Action::Stop),
        (SqlState::LOCK_FILE_EXISTS, Kind::Refused, Action::Stop),
        // HV foreign data wrapper error
        (SqlState::FDW_ERROR, Kind::Data, Action::Isolate),
        // P0 PL/pgSQL error (RAISE in a trigger)
        (SqlState::PLPGSQL_ERROR, Kind::Data, Action::Isolate),
        (SqlState::RAISE_EXCEPTION, Kind::Data, Action::Isolate),
        // XX internal error
        (SqlState::INTERNAL_ERROR, Kind::Transient, Action::Retry),
        (SqlState::DATA_CORRUPTED, Kind::Transient, Action::Retry),
    ];

    #[test]
    fn every_class_has_its_kind_and_action() {
        for (state, kind, action) in TABLE {
            let code = state.code();
            assert_eq!((classify_code(code), classify_code(code).action()), (*kind, *action), "SQLSTATE {code}");
        }
        let classes: std::collections::BTreeSet<&str> = TABLE.iter().map(|(s, ..)| &s.code()[..2]).collect();
        let appendix = [
            "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23", "24", "25",
            "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42", "44", "53", "54", "55",
            "57", "58", "72", "F0", "HV", "P0", "XX",
        ];
        assert_eq!(classes, appendix.into_iter().collect(), "every class of the appendix is in the table");
    }

    #[test]
    fn a_code_not_yet_known_is_handled_as_its_class() {
        assert_eq!(classify_code("08ZZZ"), Kind::Transient);
        assert_eq!(classify_code("22ZZZ"), Kind::Data);
        assert_eq!(classify_code("28ZZZ"), Kind::Authorization);
        assert_eq!(classify_code("42ZZZ"), Kind::Refused);
        assert_eq!(classify_code("ZZ000"), Kind::Data);
        assert_eq!(classify_code(""), Kind::Data);
    }

    #[test]
    fn unavailable_is_retried_but_a_conflict_is_not_unavailability() {
        for kind in [Kind::Connection, Kind::Transient, Kind::Cancelled] {
            assert!(kind.is_unavailable(), "{kind}");
            assert_eq!(kind.action(), Action::Retry);
        }
        assert!(!Kind::Conflict.is_unavailable());
        assert_eq!(Kind::Conflict.action(), Action::Retry);
        for kind in [Kind::Data, Kind::Authorization, Kind::Privilege, Kind::Undefined, Kind::ReadOnly, Kind::Refused] {
            assert!(!kind.is_unavailable(), "{kind}");
        }
    }

    #[test]
    fn a_pool_that_gave_no_connection_is_a_connection_failure() {
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        assert_eq!(classify_pool(&timeout), Kind::Connection);
        let chain: [&(dyn std::error::Error + 'static); 1] = [&timeout];
        assert_eq!(classify_chain(chain), Some(Kind::Connection));
        let other = std::io::Error::other("not a database's");
        let chain: [&(dyn std::error::Error + 'static); 1] = [&other];
        assert_eq!(classify_chain(chain), None);
    }
}
