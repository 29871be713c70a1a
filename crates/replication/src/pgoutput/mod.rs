//! Decoder for `pgoutput`, the logical decoding output plugin behind
//! PostgreSQL's built-in logical replication.
//!
//! Each `XLogData` payload of the replication stream is one pgoutput message
//! whose first byte says what it is. A plain transaction arrives as
//!
//! ```text
//! Begin, [Origin], {Relation | Type | Insert | Update | Delete | Truncate | Message}*, Commit
//! ```
//!
//! `Relation` describes a table (columns, types, key flags) before its first
//! change in the session and again after the table changed; the [`Decoder`]
//! keeps them in a cache keyed by relation id and attaches them to changes.
//!
//! With protocol version 2 and `streaming 'on'` (PostgreSQL 14+), a
//! transaction larger than `logical_decoding_work_mem` is sent before it
//! commits, in chunks:
//!
//! ```text
//! StreamStart(xid, first), changes…, StreamStop   (repeated, possibly interleaved with other transactions)
//! StreamCommit(xid, lsn…)  |  StreamAbort(xid, subxid)
//! ```
//!
//! Between `StreamStart` and `StreamStop`, `Relation`, `Type`, `Insert`,
//! `Update`, `Delete`, `Truncate` and `Message` carry the (sub)transaction id
//! as a prefix; the decoder tracks that state. A `StreamAbort` whose `subxid`
//! differs from `xid` rolls back only that subtransaction's changes.
//!
//! Row images (`TupleData`) hold one entry per column: `n` null, `u` an
//! unchanged TOASTed value that the server did not send (decoded as
//! [`Value::Unchanged`], never as null), `t` text, `b` binary. Text values
//! are decoded into [`Value`]s by the column's type OID.

mod value;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::lsn::{Lsn, pg_to_unix_micros};
pub use value::{Value, format_uuid, oid};

/// A pgoutput message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// How a table identifies the old row of updates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (`d`).
    Default,
    /// No old row at all (`n`).
    Nothing,
    /// The whole old row (`f`).
    Full,
    /// The columns of a unique index (`i`).
    Index,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (the primary key by default).
    pub is_key: bool,
}

/// A table as described by a `Relation` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// The schema; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// The schema, with `pg_catalog` for pgoutput's empty namespace.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() { "pg_catalog" } else { &self.namespace }
    }

    /// The indexes of the replica identity (key) columns.
    pub fn key_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i)
    }

    /// Pairs each column with its value in `tuple`.
    pub fn zip<'a>(&'a self, tuple: &'a Tuple) -> impl Iterator<Item = (&'a Column, &'a Value)> + 'a {
        self.columns.iter().zip(tuple.0.iter())
    }
}

/// A row image: one value per column of the relation, in column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuple(pub Vec<Value>);

/// The old row of an update or delete.
#[derive(Clone, Debug, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity columns are meaningful (the others are null):
    /// sent for `REPLICA IDENTITY DEFAULT`/`INDEX` when a key column changed,
    /// and for every delete.
    Key(Tuple),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Start of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the commit record.
    pub final_lsn: Lsn,
    /// Commit time, µs since the Unix epoch.
    pub commit_time: i64,
    pub xid: u32,
}

/// End of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the
    /// transaction's effects are durable.
    pub end_lsn: Lsn,
    /// µs since the Unix epoch.
    pub commit_time: i64,
}

/// The replication origin of the current transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A data type's name (sent before the first use of a non-built-in type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Insert {
    /// The (sub)transaction, inside a streamed transaction only.
    pub xid: Option<u32>,
    pub relation: Arc<Relation>,
    pub new: Tuple,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation: Arc<Relation>,
    /// Present with `REPLICA IDENTITY FULL`, or when a key column changed.
    pub old: Option<OldTuple>,
    /// Unchanged TOASTed columns are [`Value::Unchanged`].
    pub new: Tuple,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation: Arc<Relation>,
    pub old: OldTuple,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relations: Vec<Arc<Relation>>,
}

/// A message written with `pg_logical_emit_message` (sent with `messages 'true'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<u32>,
    /// Part of a transaction (delivered at its place in it) or not (delivered at once).
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// µs since the Unix epoch.
    pub commit_time: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    /// Equal to `xid` when the whole transaction aborted; else the aborted subtransaction.
    pub subxid: u32,
    /// Sent with protocol version 4 (parallel apply) only.
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<i64>,
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    /// Also stored in the decoder's relation cache.
    Relation {
        xid: Option<u32>,
        relation: Arc<Relation>,
    },
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

/// Decodes pgoutput messages, keeping the relation cache and the streaming state.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeInfo>,
    in_stream: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A cached relation.
    pub fn relation(&self, id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// A type announced by a `Type` message.
    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Whether the last stream message was a `StreamStart` not yet followed by `StreamStop`.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes one message (the payload of one `XLogData`).
    pub fn decode(&mut self, data: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader(data.clone());
        let tag = r.u8()?;
        let msg = match tag {
            b'B' => {
                let final_lsn = r.lsn()?;
                let commit_time = r.time()?;
                let xid = r.u32()?;
                Message::Begin(Begin { final_lsn, commit_time, xid })
            }
            b'C' => {
                let flags = r.u8()?;
                let commit_lsn = r.lsn()?;
                let end_lsn = r.lsn()?;
                let commit_time = r.time()?;
                Message::Commit(Commit { flags, commit_lsn, end_lsn, commit_time })
            }
            b'O' => {
                let commit_lsn = r.lsn()?;
                let name = r.cstr()?;
                Message::Origin(Origin { commit_lsn, name })
            }
            b'R' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = Arc::new(read_relation(&mut r)?);
                self.relations.insert(relation.id, relation.clone());
                Message::Relation { xid, relation }
            }
            b'Y' => {
                let xid = self.stream_xid(&mut r)?;
                let info = TypeInfo { xid, oid: r.u32()?, namespace: r.cstr()?, name: r.cstr()? };
                self.types.insert(info.oid, info.clone());
                Message::Type(info)
            }
            b'I' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = self.lookup(r.u32()?)?;
                match r.u8()? {
                    b'N' => {}
                    other => return err(format!("insert: expected 'N', got {:?}", other as char)),
                }
                let new = read_tuple(&mut r, &relation)?;
                Message::Insert(Insert { xid, relation, new })
            }
            b'U' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = self.lookup(r.u32()?)?;
                let mut old = None;
                let new = loop {
                    match r.u8()? {
                        b'K' if old.is_none() => old = Some(OldTuple::Key(read_tuple(&mut r, &relation)?)),
                        b'O' if old.is_none() => old = Some(OldTuple::Full(read_tuple(&mut r, &relation)?)),
                        b'N' => break read_tuple(&mut r, &relation)?,
                        other => return err(format!("update: unexpected tuple kind {:?}", other as char)),
                    }
                };
                Message::Update(Update { xid, relation, old, new })
            }
            b'D' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = self.lookup(r.u32()?)?;
                let old = match r.u8()? {
                    b'K' => OldTuple::Key(read_tuple(&mut r, &relation)?),
                    b'O' => OldTuple::Full(read_tuple(&mut r, &relation)?),
                    other => return err(format!("delete: unexpected tuple kind {:?}", other as char)),
                };
                Message::Delete(Delete { xid, relation, old })
            }
            b'T' => {
                let xid = self.stream_xid(&mut r)?;
                let count = r.u32()?;
                let options = r.u8()?;
                let mut relations = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    relations.push(self.lookup(r.u32()?)?);
                }
                Message::Truncate(Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relations,
                })
            }
            b'M' => {
                let xid = self.stream_xid(&mut r)?;
                let transactional = r.u8()? & 1 != 0;
                let lsn = r.lsn()?;
                let prefix = r.cstr()?;
                let len = r.u32()? as usize;
                let content = r.bytes(len)?;
                Message::Message(LogicalMessage { xid, transactional, lsn, prefix, content })
            }
            b'S' => {
                let xid = r.u32()?;
                let first_segment = r.u8()? == 1;
                self.in_stream = true;
                Message::StreamStart { xid, first_segment }
            }
            b'E' => {
                self.in_stream = false;
                Message::StreamStop
            }
            b'c' => {
                let xid = r.u32()?;
                let flags = r.u8()?;
                let commit_lsn = r.lsn()?;
                let end_lsn = r.lsn()?;
                let commit_time = r.time()?;
                Message::StreamCommit(StreamCommit { xid, flags, commit_lsn, end_lsn, commit_time })
            }
            b'A' => {
                let xid = r.u32()?;
                let subxid = r.u32()?;
                let (abort_lsn, abort_time) =
                    if r.0.remaining() >= 16 { (Some(r.lsn()?), Some(r.time()?)) } else { (None, None) };
                Message::StreamAbort(StreamAbort { xid, subxid, abort_lsn, abort_time })
            }
            other => return err(format!("unknown message type {:?} (0x{other:02x})", other as char)),
        };
        if r.0.has_remaining() {
            return err(format!("{} trailing bytes after a {:?} message", r.0.remaining(), tag as char));
        }
        Ok(msg)
    }

    /// Inside a stream block, data messages start with the (sub)transaction id.
    fn stream_xid(&self, r: &mut Reader) -> Result<Option<u32>, DecodeError> {
        if self.in_stream { Ok(Some(r.u32()?)) } else { Ok(None) }
    }

    fn lookup(&self, id: u32) -> Result<Arc<Relation>, DecodeError> {
        match self.relations.get(&id) {
            Some(rel) => Ok(rel.clone()),
            None => err(format!("change for relation {id}, which no Relation message described")),
        }
    }
}

fn read_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32()?;
    let namespace = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return err(format!("relation {id}: unknown replica identity {:?}", other as char)),
    };
    let count = r.u16()?;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let flags = r.u8()?;
        columns.push(Column { name: r.cstr()?, type_oid: r.u32()?, type_modifier: r.i32()?, is_key: flags & 1 != 0 });
    }
    Ok(Relation { id, namespace, name, replica_identity, columns })
}

fn read_tuple(r: &mut Reader, relation: &Relation) -> Result<Tuple, DecodeError> {
    let count = usize::from(r.u16()?);
    if count != relation.columns.len() {
        return err(format!(
            "a row of {}.{} has {count} columns, its Relation message {}",
            relation.namespace,
            relation.name,
            relation.columns.len()
        ));
    }
    let mut values = Vec::with_capacity(count);
    for column in &relation.columns {
        let value = match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = r.u32()? as usize;
                let raw = r.bytes(len)?;
                let text = std::str::from_utf8(&raw)
                    .map_err(|_| DecodeError(format!("column {:?}: text value is not UTF-8", column.name)))?;
                Value::from_text(column.type_oid, text)
            }
            b'b' => {
                let len = r.u32()? as usize;
                Value::Binary { type_oid: column.type_oid, bytes: r.bytes(len)? }
            }
            other => return err(format!("column {:?}: unknown value kind {:?}", column.name, other as char)),
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

/// Bounds-checked big-endian reads over a message.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n { err(format!("message truncated (needed {n} more bytes)")) } else { Ok(()) }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }
    /// A PostgreSQL timestamp, converted to µs since the Unix epoch.
    fn time(&mut self) -> Result<i64, DecodeError> {
        Ok(pg_to_unix_micros(self.i64()?))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let Some(end) = self.0.iter().position(|&b| b == 0) else {
            return err("unterminated string");
        };
        let s = String::from_utf8(self.0[..end].to_vec()).map_err(|_| DecodeError("string is not UTF-8".into()))?;
        self.0.advance(end + 1);
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
