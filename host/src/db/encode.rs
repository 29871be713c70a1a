//! Binary encoding of a plan's column as one PostgreSQL array parameter.

use bytes::{BufMut, BytesMut};
use postgres_protocol::types as wire;
use sluice_sdk::{ColumnType, Value};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One column of many rows, bound as `$n::<type>[]`.
#[derive(Debug)]
pub struct ColumnArray<'a> {
    /// The parameter type (see `sluice_sdk::sql::param_type`).
    pub param_type: ColumnType,
    pub values: Vec<&'a Value>,
}

pub fn array_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Boolean => Type::BOOL_ARRAY,
        ColumnType::Int8 => Type::INT8_ARRAY,
        ColumnType::Float8 => Type::FLOAT8_ARRAY,
        ColumnType::Numeric => Type::NUMERIC_ARRAY,
        ColumnType::Text => Type::TEXT_ARRAY,
        ColumnType::Jsonb => Type::JSONB_ARRAY,
        ColumnType::Uuid => Type::UUID_ARRAY,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ_ARRAY,
        ColumnType::Bytea => Type::BYTEA_ARRAY,
    }
}

fn element_oid(ty: ColumnType) -> u32 {
    match ty {
        ColumnType::Boolean => Type::BOOL.oid(),
        ColumnType::Int8 => Type::INT8.oid(),
        ColumnType::Float8 => Type::FLOAT8.oid(),
        ColumnType::Numeric => Type::NUMERIC.oid(),
        ColumnType::Text => Type::TEXT.oid(),
        ColumnType::Jsonb => Type::JSONB.oid(),
        ColumnType::Uuid => Type::UUID.oid(),
        ColumnType::Timestamptz => Type::TIMESTAMPTZ.oid(),
        ColumnType::Bytea => Type::BYTEA.oid(),
    }
}

/// Encodes one element. The value's type was checked against the column
/// before it got here.
fn encode(
    value: &Value,
    out: &mut BytesMut,
) -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
    match value {
        Value::Null => return Ok(postgres_protocol::IsNull::Yes),
        Value::Boolean(b) => wire::bool_to_sql(*b, out),
        Value::Int8(i) => wire::int8_to_sql(*i, out),
        Value::Float8(f) => wire::float8_to_sql(*f, out),
        Value::Numeric(s) | Value::Text(s) => wire::text_to_sql(s, out),
        Value::Jsonb(s) => {
            out.put_u8(1); // jsonb binary format version
            out.put_slice(s.as_bytes());
        }
        Value::Uuid((hi, lo)) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&hi.to_be_bytes());
            bytes[8..].copy_from_slice(&lo.to_be_bytes());
            wire::uuid_to_sql(bytes, out);
        }
        Value::Timestamptz(micros) => wire::timestamp_to_sql(micros - PG_EPOCH_OFFSET_MICROS, out),
        Value::Bytea(b) => wire::bytea_to_sql(b, out),
    }
    Ok(postgres_protocol::IsNull::No)
}

impl ToSql for ColumnArray<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let dimension = wire::ArrayDimension { len: i32::try_from(self.values.len())?, lower_bound: 1 };
        wire::array_to_sql(
            Some(dimension),
            element_oid(self.param_type),
            self.values.iter(),
            |v, out| encode(v, out),
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Array(_))
    }

    to_sql_checked!();
}

/// One value as a parameter of its column's own type (binary COPY). Numeric
/// values are refused: they travel as text and are cast in SQL.
#[derive(Debug)]
pub struct ValueParam<'a>(pub &'a Value);

impl ToSql for ValueParam<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if matches!(self.0, Value::Numeric(_)) {
            return Err("numeric values cannot be sent in binary; cast them from text".into());
        }
        Ok(match encode(self.0, out)? {
            postgres_protocol::IsNull::Yes => IsNull::Yes,
            postgres_protocol::IsNull::No => IsNull::No,
        })
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The PostgreSQL type of a column (for binary COPY).
pub fn column_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Boolean => Type::BOOL,
        ColumnType::Int8 => Type::INT8,
        ColumnType::Float8 => Type::FLOAT8,
        ColumnType::Numeric => Type::NUMERIC,
        ColumnType::Text => Type::TEXT,
        ColumnType::Jsonb => Type::JSONB,
        ColumnType::Uuid => Type::UUID,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Bytea => Type::BYTEA,
    }
}
