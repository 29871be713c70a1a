//! Rust twins of the `sluice:ingest/types` WIT interface.
//!
//! The host lifts these straight out of a component (feature `wasmtime`), and
//! normalizer libraries build them natively, so one normalizer runs unchanged
//! in the host, in tests and on Spin.

#[cfg(feature = "wasmtime")]
use wasmtime::component::{ComponentType, Lift, Lower};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type TimestampMicros = i64;

/// One typed column value.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(variant))]
pub enum Value {
    #[cfg_attr(feature = "wasmtime", component(name = "null"))]
    Null,
    #[cfg_attr(feature = "wasmtime", component(name = "boolean"))]
    Boolean(bool),
    #[cfg_attr(feature = "wasmtime", component(name = "int8"))]
    Int8(i64),
    #[cfg_attr(feature = "wasmtime", component(name = "float8"))]
    Float8(f64),
    #[cfg_attr(feature = "wasmtime", component(name = "numeric"))]
    Numeric(String),
    #[cfg_attr(feature = "wasmtime", component(name = "text"))]
    Text(String),
    #[cfg_attr(feature = "wasmtime", component(name = "jsonb"))]
    Jsonb(String),
    #[cfg_attr(feature = "wasmtime", component(name = "uuid"))]
    Uuid((u64, u64)),
    #[cfg_attr(feature = "wasmtime", component(name = "timestamptz"))]
    Timestamptz(TimestampMicros),
    #[cfg_attr(feature = "wasmtime", component(name = "bytea"))]
    Bytea(Vec<u8>),
}

impl Value {
    pub fn uuid(id: u128) -> Value {
        Value::Uuid(((id >> 64) as u64, id as u64))
    }

    /// Text, or null when absent.
    pub fn text_or_null(text: Option<impl Into<String>>) -> Value {
        text.map_or(Value::Null, |t| Value::Text(t.into()))
    }

    /// The column type this value fits, or `None` for null (which fits any).
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Int8(_) => ColumnType::Int8,
            Value::Float8(_) => ColumnType::Float8,
            Value::Numeric(_) => ColumnType::Numeric,
            Value::Text(_) => ColumnType::Text,
            Value::Jsonb(_) => ColumnType::Jsonb,
            Value::Uuid(_) => ColumnType::Uuid,
            Value::Timestamptz(_) => ColumnType::Timestamptz,
            Value::Bytea(_) => ColumnType::Bytea,
        })
    }

    /// A rough count of the bytes this value occupies on the wire.
    pub fn wire_size(&self) -> usize {
        match self {
            Value::Null => 0,
            Value::Boolean(_) => 1,
            Value::Int8(_) | Value::Float8(_) | Value::Timestamptz(_) => 8,
            Value::Uuid(_) => 16,
            Value::Numeric(s) | Value::Text(s) | Value::Jsonb(s) => s.len(),
            Value::Bytea(b) => b.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(enum))]
#[repr(u8)]
pub enum ColumnType {
    #[cfg_attr(feature = "wasmtime", component(name = "boolean"))]
    Boolean,
    #[cfg_attr(feature = "wasmtime", component(name = "int8"))]
    Int8,
    #[cfg_attr(feature = "wasmtime", component(name = "float8"))]
    Float8,
    #[cfg_attr(feature = "wasmtime", component(name = "numeric"))]
    Numeric,
    #[cfg_attr(feature = "wasmtime", component(name = "text"))]
    Text,
    #[cfg_attr(feature = "wasmtime", component(name = "jsonb"))]
    Jsonb,
    #[cfg_attr(feature = "wasmtime", component(name = "uuid"))]
    Uuid,
    #[cfg_attr(feature = "wasmtime", component(name = "timestamptz"))]
    Timestamptz,
    #[cfg_attr(feature = "wasmtime", component(name = "bytea"))]
    Bytea,
}

impl ColumnType {
    /// The type's name in PostgreSQL, as `format_type` prints it.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int8 => "bigint",
            ColumnType::Float8 => "double precision",
            ColumnType::Numeric => "numeric",
            ColumnType::Text => "text",
            ColumnType::Jsonb => "jsonb",
            ColumnType::Uuid => "uuid",
            ColumnType::Timestamptz => "timestamp with time zone",
            ColumnType::Bytea => "bytea",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(variant))]
pub enum ColumnDefault {
    #[cfg_attr(feature = "wasmtime", component(name = "now"))]
    Now,
    #[cfg_attr(feature = "wasmtime", component(name = "constant"))]
    Constant(Value),
    /// The next number of a sequence the table owns (`bigserial`).
    #[cfg_attr(feature = "wasmtime", component(name = "serial"))]
    Serial,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Column {
    pub name: String,
    #[cfg_attr(feature = "wasmtime", component(name = "data-type"))]
    pub data_type: ColumnType,
    pub nullable: bool,
    pub default: Option<ColumnDefault>,
}

impl Column {
    pub fn new(name: &str, data_type: ColumnType) -> Column {
        Column { name: name.to_owned(), data_type, nullable: true, default: None }
    }

    pub fn not_null(mut self) -> Column {
        self.nullable = false;
        self
    }

    pub fn default(mut self, default: ColumnDefault) -> Column {
        self.default = Some(default);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(enum))]
#[repr(u8)]
pub enum IndexMethod {
    #[cfg_attr(feature = "wasmtime", component(name = "btree"))]
    Btree,
    #[cfg_attr(feature = "wasmtime", component(name = "brin"))]
    Brin,
    #[cfg_attr(feature = "wasmtime", component(name = "gin"))]
    Gin,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct IndexColumn {
    pub name: String,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Index {
    pub name: String,
    pub columns: Vec<IndexColumn>,
    pub method: IndexMethod,
    pub unique: bool,
}

impl Index {
    /// A b-tree index over `columns`, a leading `-` marking a descending one.
    pub fn btree(name: &str, columns: &[&str]) -> Index {
        let columns = columns
            .iter()
            .map(|c| match c.strip_prefix('-') {
                Some(name) => IndexColumn { name: name.to_owned(), descending: true },
                None => IndexColumn { name: (*c).to_owned(), descending: false },
            })
            .collect();
        Index { name: name.to_owned(), columns, method: IndexMethod::Btree, unique: false }
    }

    pub fn method(mut self, method: IndexMethod) -> Index {
        self.method = method;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    #[cfg_attr(feature = "wasmtime", component(name = "primary-key"))]
    pub primary_key: Vec<String>,
    pub indexes: Vec<Index>,
    /// Never created itself; plans name instances of it.
    pub template: bool,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The table `name` of this template's shape.
    pub fn instance(&self, name: &str) -> Table {
        Table { name: name.to_owned(), template: false, ..self.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(variant))]
pub enum Conflict {
    #[cfg_attr(feature = "wasmtime", component(name = "do-nothing"))]
    DoNothing,
    #[cfg_attr(feature = "wasmtime", component(name = "update"))]
    Update(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Row {
    pub event: u32,
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct UpsertPlan {
    pub table: String,
    /// The declared template `table` is an instance of.
    pub template: Option<String>,
    pub columns: Vec<String>,
    pub conflict: Conflict,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Rejection {
    pub index: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Request {
    pub tenant: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    #[cfg_attr(feature = "wasmtime", component(name = "received-at"))]
    pub received_at: TimestampMicros,
    /// The tenant's settings for the component: a JSON object.
    pub settings: String,
}

impl Request {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Outcome {
    pub events: u32,
    pub plans: Vec<UpsertPlan>,
    pub rejections: Vec<Rejection>,
}

impl Outcome {
    /// The outcome of a request whose events each become one row of `table`
    /// or a rejection, in order: the common shape of a normalizer. Each
    /// row's `event` must be its position in `events`. (A row with a value
    /// PostgreSQL would refuse is its event's rejection by `check_row`.)
    pub fn one_table(
        table: &str,
        columns: &[&str],
        conflict: Conflict,
        events: impl IntoIterator<Item = Result<Row, String>>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let mut rows = Vec::new();
        for event in events {
            match event {
                Ok(row) => rows.push(row),
                Err(reason) => outcome.rejections.push(Rejection { index: outcome.events, reason }),
            }
            outcome.events += 1;
        }
        if !rows.is_empty() {
            outcome.plans.push(UpsertPlan {
                table: table.to_owned(),
                template: None,
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                conflict,
                rows,
            });
        }
        outcome
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(variant))]
pub enum RequestError {
    #[cfg_attr(feature = "wasmtime", component(name = "malformed"))]
    Malformed(String),
    #[cfg_attr(feature = "wasmtime", component(name = "unsupported-media-type"))]
    UnsupportedMediaType(String),
    #[cfg_attr(feature = "wasmtime", component(name = "not-found"))]
    NotFound(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Malformed(m) | RequestError::UnsupportedMediaType(m) | RequestError::NotFound(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A column and its value in a row image.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct NamedValue {
    pub name: String,
    pub value: Value,
}

impl NamedValue {
    pub fn new(name: &str, value: Value) -> NamedValue {
        NamedValue { name: name.to_owned(), value }
    }
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(enum))]
#[repr(u8)]
pub enum ChangeOp {
    #[cfg_attr(feature = "wasmtime", component(name = "insert"))]
    Insert,
    #[cfg_attr(feature = "wasmtime", component(name = "update"))]
    Update,
    #[cfg_attr(feature = "wasmtime", component(name = "delete"))]
    Delete,
    #[cfg_attr(feature = "wasmtime", component(name = "truncate"))]
    Truncate,
}

impl ChangeOp {
    /// How wit-bindgen's generated glue reads the enum in a guest (it is
    /// an input of `handle-transaction`).
    #[doc(hidden)]
    pub unsafe fn _lift(value: u8) -> ChangeOp {
        match value {
            0 => ChangeOp::Insert,
            1 => ChangeOp::Update,
            2 => ChangeOp::Delete,
            3 => ChangeOp::Truncate,
            _ => panic!("invalid change-op discriminant {value}"),
        }
    }

    /// `insert`, `update`, `delete` or `truncate`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Truncate => "truncate",
        }
    }
}

/// One row change of a committed transaction.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct RowChange {
    pub op: ChangeOp,
    pub schema: String,
    pub table: String,
    /// `table:key` in `public`, `schema.table:key` elsewhere; none for a
    /// truncate or a table without a key.
    #[cfg_attr(feature = "wasmtime", component(name = "element-id"))]
    pub element_id: Option<String>,
    pub key: Vec<NamedValue>,
    pub before: Option<Vec<NamedValue>>,
    pub after: Option<Vec<NamedValue>>,
    /// Columns left out of `after`: unchanged TOASTed values (not null).
    #[cfg_attr(feature = "wasmtime", component(name = "unchanged-toast"))]
    pub unchanged_toast: Vec<String>,
}

/// A committed transaction, or one part of a large one.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "wasmtime", derive(ComponentType, Lift, Lower), component(record))]
pub struct Transaction {
    pub source: String,
    pub xid: u32,
    #[cfg_attr(feature = "wasmtime", component(name = "commit-lsn"))]
    pub commit_lsn: u64,
    #[cfg_attr(feature = "wasmtime", component(name = "end-lsn"))]
    pub end_lsn: u64,
    #[cfg_attr(feature = "wasmtime", component(name = "commit-time"))]
    pub commit_time: TimestampMicros,
    /// The position of `changes[0]` among the transaction's changes.
    #[cfg_attr(feature = "wasmtime", component(name = "first-change"))]
    pub first_change: u32,
    /// Whether this part is the transaction's last.
    pub last: bool,
    pub changes: Vec<RowChange>,
}
