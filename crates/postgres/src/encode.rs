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
        // Room for the whole array at once: growing the buffer by doubling
        // would copy a batch's bodies several times over.
        out.reserve(20 + self.values.iter().map(|v| 5 + v.wire_size()).sum::<usize>());
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

/// The rows as one binary `COPY` stream (header, rows, trailer). Numeric
/// values cannot be in it: they travel as text (plans with a numeric column
/// have no `Upsert::copy_sql`).
pub fn copy_data<'a>(rows: impl Iterator<Item = &'a [Value]> + Clone) -> Result<BytesMut, String> {
    let size = rows.clone().map(|r| 2 + r.iter().map(|v| 5 + v.wire_size()).sum::<usize>()).sum::<usize>();
    let mut out = BytesMut::with_capacity(19 + size + 2);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension
    for row in rows {
        out.put_i16(i16::try_from(row.len()).map_err(|_| "too many columns for COPY")?);
        for value in row {
            if matches!(value, Value::Numeric(_)) {
                return Err("numeric values cannot be sent in binary; cast them from text".into());
            }
            let at = out.len();
            out.put_i32(0);
            match encode(value, &mut out).map_err(|e| e.to_string())? {
                postgres_protocol::IsNull::Yes => out[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes()),
                postgres_protocol::IsNull::No => {
                    let len = i32::try_from(out.len() - at - 4).map_err(|_| "a value too large for COPY")?;
                    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
        }
    }
    out.put_i16(-1);
    Ok(out)
}
