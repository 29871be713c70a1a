//! The changes of one transaction until it commits: in memory up to a
//! limit, then in a file, so a large (streamed) transaction does not have
//! to fit in memory. Changes of aborted subtransactions are left out when
//! the transaction is read back.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sluice_sdk::{ChangeOp, NamedValue, RowChange, Value};

pub struct TxBuffer {
    limit: usize,
    dir: PathBuf,
    memory: Vec<(u32, RowChange)>,
    file: Option<(BufWriter<File>, PathBuf)>,
    /// Changes per (sub)transaction id.
    counts: HashMap<u32, u64>,
    aborted: HashSet<u32>,
}

impl TxBuffer {
    /// A buffer keeping at most `limit` changes in memory, spilling the
    /// rest to a file in `dir`.
    pub fn new(limit: usize, dir: &Path) -> TxBuffer {
        TxBuffer {
            limit,
            dir: dir.to_owned(),
            memory: Vec::new(),
            file: None,
            counts: HashMap::new(),
            aborted: HashSet::new(),
        }
    }

    pub fn push(&mut self, subxid: u32, change: RowChange) -> io::Result<()> {
        *self.counts.entry(subxid).or_default() += 1;
        if self.file.is_none() && self.memory.len() >= self.limit {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!("tx-{}-{}.spill", std::process::id(), unique()));
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            for (sub, change) in self.memory.drain(..) {
                write_record(&mut out, sub, &change)?;
            }
            tracing::debug!(path = %path.display(), "a large transaction spills to disk");
            self.file = Some((out, path));
        }
        match &mut self.file {
            Some((out, _)) => write_record(out, subxid, &change),
            None => {
                self.memory.push((subxid, change));
                Ok(())
            }
        }
    }

    /// Drops the changes of an aborted subtransaction.
    pub fn abort_subtransaction(&mut self, subxid: u32) {
        self.aborted.insert(subxid);
    }

    /// Changes that will be delivered.
    pub fn delivered(&self) -> u64 {
        self.counts.iter().filter(|(sub, _)| !self.aborted.contains(sub)).map(|(_, n)| n).sum()
    }

    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the changes back in order, in parts.
    pub fn into_reader(mut self) -> io::Result<TxReader> {
        let source = match self.file.take() {
            Some((mut out, path)) => {
                out.flush()?;
                drop(out);
                let file = File::open(&path)?;
                Source::File(BufReader::with_capacity(1 << 20, file), Spilled(path))
            }
            None => Source::Memory(std::mem::take(&mut self.memory).into_iter()),
        };
        Ok(TxReader { source, aborted: std::mem::take(&mut self.aborted) })
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes the spill file when dropped.
struct Spilled(PathBuf);

impl Drop for Spilled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Source {
    Memory(std::vec::IntoIter<(u32, RowChange)>),
    /// The file, and its removal when done.
    File(BufReader<File>, #[allow(dead_code)] Spilled),
}

pub struct TxReader {
    source: Source,
    aborted: HashSet<u32>,
}

impl TxReader {
    /// The next at most `n` changes (fewer only at the end).
    pub fn next_part(&mut self, n: usize) -> io::Result<Vec<RowChange>> {
        let mut part = Vec::with_capacity(n.min(4096));
        while part.len() < n {
            let next = match &mut self.source {
                Source::Memory(changes) => changes.next(),
                Source::File(input, _) => read_record(input)?,
            };
            let Some((sub, change)) = next else { break };
            if !self.aborted.contains(&sub) {
                part.push(change);
            }
        }
        Ok(part)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// A record: its length (u32), then the subtransaction id and the change.

fn write_record(out: &mut impl Write, subxid: u32, change: &RowChange) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    buf.extend(subxid.to_le_bytes());
    encode_change(&mut buf, change);
    let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("a change larger than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&buf)
}

fn read_record(input: &mut impl Read) -> io::Result<Option<(u32, RowChange)>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut buf)?;
    let mut r = Cursor(&buf);
    let decoded = (|| Some((r.u32()?, decode_change(&mut r)?)))();
    decoded.map(Some).ok_or_else(|| io::Error::other("a spilled change does not decode"))
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend((b.len() as u32).to_le_bytes());
    buf.extend(b);
}

fn put_values(buf: &mut Vec<u8>, values: &[NamedValue]) {
    buf.extend((values.len() as u32).to_le_bytes());
    for v in values {
        put_str(buf, &v.name);
        put_value(buf, &v.value);
    }
}

fn put_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.push(0),
        Value::Boolean(b) => buf.extend([1, u8::from(*b)]),
        Value::Int8(i) => {
            buf.push(2);
            buf.extend(i.to_le_bytes());
        }
        Value::Float8(f) => {
            buf.push(3);
            buf.extend(f.to_le_bytes());
        }
        Value::Numeric(s) => {
            buf.push(4);
            put_str(buf, s);
        }
        Value::Text(s) => {
            buf.push(5);
            put_str(buf, s);
        }
        Value::Jsonb(s) => {
            buf.push(6);
            put_str(buf, s);
        }
        Value::Uuid((hi, lo)) => {
            buf.push(7);
            buf.extend(hi.to_le_bytes());
            buf.extend(lo.to_le_bytes());
        }
        Value::Timestamptz(t) => {
            buf.push(8);
            buf.extend(t.to_le_bytes());
        }
        Value::Bytea(b) => {
            buf.push(9);
            put_bytes(buf, b);
        }
    }
}

fn encode_change(buf: &mut Vec<u8>, c: &RowChange) {
    buf.push(c.op as u8);
    put_str(buf, &c.schema);
    put_str(buf, &c.table);
    match &c.element_id {
        Some(id) => {
            buf.push(1);
            put_str(buf, id);
        }
        None => buf.push(0),
    }
    put_values(buf, &c.key);
    for image in [&c.before, &c.after] {
        match image {
            Some(values) => {
                buf.push(1);
                put_values(buf, values);
            }
            None => buf.push(0),
        }
    }
    buf.extend((c.unchanged_toast.len() as u32).to_le_bytes());
    for name in &c.unchanged_toast {
        put_str(buf, name);
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn value(&mut self) -> Option<Value> {
        Some(match self.u8()? {
            0 => Value::Null,
            1 => Value::Boolean(self.u8()? != 0),
            2 => Value::Int8(self.u64()? as i64),
            3 => Value::Float8(f64::from_bits(self.u64()?)),
            4 => Value::Numeric(self.string()?),
            5 => Value::Text(self.string()?),
            6 => Value::Jsonb(self.string()?),
            7 => Value::Uuid((self.u64()?, self.u64()?)),
            8 => Value::Timestamptz(self.u64()? as i64),
            9 => Value::Bytea(self.bytes()?),
            _ => return None,
        })
    }
    fn values(&mut self) -> Option<Vec<NamedValue>> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(NamedValue { name: self.string()?, value: self.value()? });
        }
        Some(out)
    }
    fn optional<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(f(self)?)),
        }
    }
}

fn decode_change(r: &mut Cursor) -> Option<RowChange> {
    let op = match r.u8()? {
        0 => ChangeOp::Insert,
        1 => ChangeOp::Update,
        2 => ChangeOp::Delete,
        3 => ChangeOp::Truncate,
        _ => return None,
    };
    let schema = r.string()?;
    let table = r.string()?;
    let element_id = r.optional(Cursor::string)?;
    let key = r.values()?;
    let before = r.optional(Cursor::values)?;
    let after = r.optional(Cursor::values)?;
    let n = r.u32()? as usize;
    let mut unchanged_toast = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        unchanged_toast.push(r.string()?);
    }
    Some(RowChange { op, schema, table, element_id, key, before, after, unchanged_toast })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: i64) -> RowChange {
        RowChange {
            op: if i % 2 == 0 { ChangeOp::Insert } else { ChangeOp::Update },
            schema: "s".into(),
            table: "t".into(),
            element_id: (i % 3 != 0).then(|| format!("s.t:{i}")),
            key: vec![NamedValue::new("id", Value::Int8(i))],
            before: (i % 2 == 1).then(|| vec![NamedValue::new("f", Value::Float8(f64::NAN))]),
            after: Some(vec![
                NamedValue::new("id", Value::Int8(i)),
                NamedValue::new("b", Value::Boolean(true)),
                NamedValue::new("n", Value::Numeric("1.5".into())),
                NamedValue::new("t", Value::Text("é".into())),
                NamedValue::new("j", Value::Jsonb("{}".into())),
                NamedValue::new("u", Value::uuid(u128::MAX - 5)),
                NamedValue::new("ts", Value::Timestamptz(-5)),
                NamedValue::new("x", Value::Bytea(vec![1, 2, 3])),
                NamedValue::new("z", Value::Null),
            ]),
            unchanged_toast: vec!["big".into()],
        }
    }

    fn read_all(buffer: TxBuffer, part: usize) -> Vec<Vec<RowChange>> {
        let mut reader = buffer.into_reader().unwrap();
        let mut parts = Vec::new();
        loop {
            let p = reader.next_part(part).unwrap();
            if p.is_empty() {
                return parts;
            }
            parts.push(p);
        }
    }

    #[test]
    fn spills_past_the_limit_and_reads_back_in_order_without_aborted_subtransactions() {
        let dir = std::env::temp_dir().join(format!("sluice-spill-test-{}", std::process::id()));
        for limit in [1000, 3] {
            let mut buffer = TxBuffer::new(limit, &dir);
            for i in 0..10 {
                buffer.push(if i == 4 || i == 7 { 99 } else { 1 }, change(i)).unwrap();
            }
            buffer.abort_subtransaction(99);
            assert_eq!(buffer.is_spilled(), limit == 3);
            assert_eq!(buffer.delivered(), 8);
            let parts = read_all(buffer, 3);
            assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
            let all: Vec<RowChange> = parts.into_iter().flatten().collect();
            let expected: Vec<RowChange> = [0, 1, 2, 3, 5, 6, 8, 9].into_iter().map(change).collect();
            // NaN != NaN: compare the debug forms.
            assert_eq!(format!("{all:?}"), format!("{expected:?}"));
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the spill file is removed");
        let _ = std::fs::remove_dir(&dir);
    }
}
