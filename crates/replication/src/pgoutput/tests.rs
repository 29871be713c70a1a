//! The decoder on hand-built messages, byte for byte as the protocol documents them.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

/// Builds a pgoutput message.
struct B(BytesMut);

impl B {
    fn new(tag: u8) -> B {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        B(b)
    }
    fn u8(mut self, v: u8) -> B {
        self.0.put_u8(v);
        self
    }
    fn u16(mut self, v: u16) -> B {
        self.0.put_u16(v);
        self
    }
    fn u32(mut self, v: u32) -> B {
        self.0.put_u32(v);
        self
    }
    fn i64(mut self, v: i64) -> B {
        self.0.put_i64(v);
        self
    }
    fn s(mut self, v: &str) -> B {
        self.0.put_slice(v.as_bytes());
        self.0.put_u8(0);
        self
    }
    fn text(mut self, v: &str) -> B {
        self.0.put_u8(b't');
        self.0.put_u32(v.len() as u32);
        self.0.put_slice(v.as_bytes());
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

const REL: u32 = 16_384;

/// `public.t (id int4 key, name text, doc jsonb)`, optionally inside a stream.
fn relation(xid: Option<u32>) -> Bytes {
    let mut b = B::new(b'R');
    if let Some(x) = xid {
        b = b.u32(x);
    }
    b.u32(REL)
        .s("public")
        .s("t")
        .u8(b'd')
        .u16(3)
        .u8(1)
        .s("id")
        .u32(oid::INT4)
        .u32(u32::MAX)
        .u8(0)
        .s("name")
        .u32(oid::TEXT)
        .u32(u32::MAX)
        .u8(0)
        .s("doc")
        .u32(oid::JSONB)
        .u32(u32::MAX)
        .done()
}

fn decoder_with_relation() -> Decoder {
    let mut d = Decoder::new();
    d.decode(&relation(None)).unwrap();
    d
}

#[test]
fn begin_commit_origin() {
    let mut d = Decoder::new();
    let m = d.decode(&B::new(b'B').i64(0x10_0000_0020).i64(1_000_000).u32(745).done()).unwrap();
    assert_eq!(
        m,
        Message::Begin(Begin {
            final_lsn: Lsn(0x10_0000_0020),
            commit_time: crate::lsn::PG_EPOCH_OFFSET_MICROS + 1_000_000,
            xid: 745
        })
    );
    let m = d.decode(&B::new(b'C').u8(0).i64(0x20).i64(0x48).i64(0).done()).unwrap();
    assert_eq!(
        m,
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x20),
            end_lsn: Lsn(0x48),
            commit_time: crate::lsn::PG_EPOCH_OFFSET_MICROS
        })
    );
    let m = d.decode(&B::new(b'O').i64(7).s("node_a").done()).unwrap();
    assert_eq!(m, Message::Origin(Origin { commit_lsn: Lsn(7), name: "node_a".into() }));
}

#[test]
fn relation_is_cached_and_attached_to_changes() {
    let mut d = Decoder::new();
    let Message::Relation { xid: None, relation } = d.decode(&relation(None)).unwrap() else { panic!() };
    assert_eq!(relation.schema(), "public");
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    assert_eq!(relation.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "name", "doc"]);
    assert_eq!(relation.key_columns().collect::<Vec<_>>(), [0]);
    assert_eq!(relation.columns[0].type_modifier, -1);
    assert!(d.relation(REL).is_some());

    let insert = B::new(b'I').u32(REL).u8(b'N').u16(3).text("42").u8(b'n').text(r#"{"a": [1, 2]}"#).done();
    let Message::Insert(ins) = d.decode(&insert).unwrap() else { panic!() };
    assert_eq!(ins.xid, None);
    assert_eq!(ins.relation.name, "t");
    assert_eq!(ins.new, Tuple(vec![Value::Int4(42), Value::Null, Value::Json(r#"{"a": [1, 2]}"#.into())]));
    let pairs: Vec<_> = ins.relation.zip(&ins.new).map(|(c, v)| (c.name.clone(), v.clone())).collect();
    assert_eq!(pairs[0], ("id".to_string(), Value::Int4(42)));
}

#[test]
fn a_change_for_an_unknown_relation_is_an_error() {
    let mut d = Decoder::new();
    let e = d.decode(&B::new(b'I').u32(99).u8(b'N').u16(0).done()).unwrap_err();
    assert!(e.0.contains("relation 99"), "{e}");
}

#[test]
fn update_with_key_full_and_no_old_tuple_and_unchanged_toast() {
    let mut d = decoder_with_relation();
    // No old tuple; the TOASTed `name` did not change: Unchanged, not Null.
    let m = d.decode(&B::new(b'U').u32(REL).u8(b'N').u16(3).text("1").u8(b'u').text("{}").done()).unwrap();
    let Message::Update(u) = m else { panic!() };
    assert_eq!(u.old, None);
    assert_eq!(u.new.0[1], Value::Unchanged);
    assert!(!u.new.0[1].is_null());

    // Key changed: old key tuple ('K'), non-key columns null.
    let m = d
        .decode(
            &B::new(b'U')
                .u32(REL)
                .u8(b'K')
                .u16(3)
                .text("1")
                .u8(b'n')
                .u8(b'n')
                .u8(b'N')
                .u16(3)
                .text("2")
                .text("x")
                .text("{}")
                .done(),
        )
        .unwrap();
    let Message::Update(u) = m else { panic!() };
    assert_eq!(u.old, Some(OldTuple::Key(Tuple(vec![Value::Int4(1), Value::Null, Value::Null]))));
    assert_eq!(u.new.0[0], Value::Int4(2));

    // Replica identity full: old full tuple ('O').
    let m = d
        .decode(
            &B::new(b'U')
                .u32(REL)
                .u8(b'O')
                .u16(3)
                .text("2")
                .text("x")
                .text("{}")
                .u8(b'N')
                .u16(3)
                .text("2")
                .text("y")
                .text("{}")
                .done(),
        )
        .unwrap();
    let Message::Update(u) = m else { panic!() };
    let Some(OldTuple::Full(old)) = &u.old else { panic!("{u:?}") };
    assert_eq!(old.0[1], Value::Text("x".into()));
    assert_eq!(u.old.as_ref().unwrap().tuple().0.len(), 3);
}

#[test]
fn delete_and_truncate() {
    let mut d = decoder_with_relation();
    d.decode(&B::new(b'R').u32(REL + 1).s("inv").s("items").u8(b'f').u16(1).u8(0).s("v").u32(25).u32(0).done())
        .unwrap();
    let m = d.decode(&B::new(b'D').u32(REL).u8(b'K').u16(3).text("7").u8(b'n').u8(b'n').done()).unwrap();
    let Message::Delete(del) = m else { panic!() };
    assert_eq!(del.old, OldTuple::Key(Tuple(vec![Value::Int4(7), Value::Null, Value::Null])));

    let m = d.decode(&B::new(b'D').u32(REL + 1).u8(b'O').u16(1).text("gone").done()).unwrap();
    let Message::Delete(del) = m else { panic!() };
    assert_eq!(del.relation.replica_identity, ReplicaIdentity::Full);
    assert_eq!(del.old, OldTuple::Full(Tuple(vec![Value::Text("gone".into())])));

    let m = d.decode(&B::new(b'T').u32(2).u8(3).u32(REL).u32(REL + 1).done()).unwrap();
    let Message::Truncate(t) = m else { panic!() };
    assert!(t.cascade && t.restart_identity);
    assert_eq!(t.relations.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["t", "items"]);
    let m = d.decode(&B::new(b'T').u32(1).u8(0).u32(REL).done()).unwrap();
    let Message::Truncate(t) = m else { panic!() };
    assert!(!t.cascade && !t.restart_identity);
}

#[test]
fn type_and_logical_message() {
    let mut d = Decoder::new();
    let m = d.decode(&B::new(b'Y').u32(90_001).s("public").s("mood").done()).unwrap();
    assert_eq!(m, Message::Type(TypeInfo { xid: None, oid: 90_001, namespace: "public".into(), name: "mood".into() }));
    assert_eq!(d.type_info(90_001).unwrap().name, "mood");
    let m = d.decode(&B::new(b'M').u8(1).i64(0x99).s("sluice").u32(3).u8(1).u8(2).u8(3).done()).unwrap();
    assert_eq!(
        m,
        Message::Message(LogicalMessage {
            xid: None,
            transactional: true,
            lsn: Lsn(0x99),
            prefix: "sluice".into(),
            content: Bytes::from_static(&[1, 2, 3])
        })
    );
}

#[test]
fn streamed_transaction_messages_carry_xids_only_inside_a_stream() {
    let mut d = Decoder::new();
    assert_eq!(
        d.decode(&B::new(b'S').u32(900).u8(1).done()).unwrap(),
        Message::StreamStart { xid: 900, first_segment: true }
    );
    assert!(d.in_stream());
    let Message::Relation { xid, .. } = d.decode(&relation(Some(900))).unwrap() else { panic!() };
    assert_eq!(xid, Some(900));
    let m = d.decode(&B::new(b'I').u32(901).u32(REL).u8(b'N').u16(3).text("1").text("a").u8(b'n').done()).unwrap();
    let Message::Insert(ins) = m else { panic!() };
    assert_eq!(ins.xid, Some(901), "a subtransaction's xid");
    let m = d.decode(&B::new(b'D').u32(900).u32(REL).u8(b'K').u16(3).text("1").u8(b'n').u8(b'n').done()).unwrap();
    assert!(matches!(m, Message::Delete(Delete { xid: Some(900), .. })));
    let m = d.decode(&B::new(b'T').u32(900).u32(1).u8(0).u32(REL).done()).unwrap();
    assert!(matches!(m, Message::Truncate(Truncate { xid: Some(900), .. })));
    let m = d.decode(&B::new(b'M').u32(900).u8(1).i64(5).s("p").u32(0).done()).unwrap();
    assert!(matches!(m, Message::Message(LogicalMessage { xid: Some(900), .. })));
    let m = d.decode(&B::new(b'Y').u32(900).u32(5).s("s").s("n").done()).unwrap();
    assert!(matches!(m, Message::Type(TypeInfo { xid: Some(900), .. })));
    assert_eq!(d.decode(&B::new(b'E').done()).unwrap(), Message::StreamStop);
    assert!(!d.in_stream());
    // Outside the stream, no xid prefix.
    let m = d.decode(&B::new(b'I').u32(REL).u8(b'N').u16(3).text("2").text("b").u8(b'n').done()).unwrap();
    assert!(matches!(m, Message::Insert(Insert { xid: None, .. })));

    assert_eq!(
        d.decode(&B::new(b'S').u32(900).u8(0).done()).unwrap(),
        Message::StreamStart { xid: 900, first_segment: false }
    );
    d.decode(&B::new(b'E').done()).unwrap();
    let m = d.decode(&B::new(b'c').u32(900).u8(0).i64(0x100).i64(0x128).i64(0).done()).unwrap();
    assert_eq!(
        m,
        Message::StreamCommit(StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x128),
            commit_time: crate::lsn::PG_EPOCH_OFFSET_MICROS
        })
    );
    let m = d.decode(&B::new(b'A').u32(900).u32(901).done()).unwrap();
    assert_eq!(m, Message::StreamAbort(StreamAbort { xid: 900, subxid: 901, abort_lsn: None, abort_time: None }));
    // Protocol 4 adds the abort LSN and time.
    let m = d.decode(&B::new(b'A').u32(900).u32(900).i64(0x200).i64(0).done()).unwrap();
    assert!(matches!(m, Message::StreamAbort(StreamAbort { abort_lsn: Some(Lsn(0x200)), .. })));
}

#[test]
fn binary_values_are_kept() {
    let mut d = decoder_with_relation();
    let m = d.decode(&B::new(b'I').u32(REL).u8(b'N').u16(3).u8(b'b').u32(4).u32(42).u8(b'n').u8(b'n').done()).unwrap();
    let Message::Insert(ins) = m else { panic!() };
    assert_eq!(ins.new.0[0], Value::Binary { type_oid: oid::INT4, bytes: Bytes::from_static(&[0, 0, 0, 42]) });
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let mut d = decoder_with_relation();
    let cases: Vec<Bytes> = vec![
        Bytes::new(),
        B::new(b'B').i64(1).done(),
        B::new(b'C').u8(0).done(),
        B::new(b'Z').done(),
        B::new(b'R').u32(1).s("public").done(),
        B::new(b'R').u32(1).s("public").s("x").u8(b'?').u16(0).done(),
        B::new(b'I').u32(REL).u8(b'X').done(),
        B::new(b'I').u32(REL).u8(b'N').u16(4).done(),
        B::new(b'I').u32(REL).u8(b'N').u16(1).text("1").done(),
        B::new(b'I').u32(REL).u8(b'N').u16(3).u8(b't').u32(100).done(),
        B::new(b'I').u32(REL).u8(b'N').u16(3).u8(b'?').done(),
        B::new(b'I').u32(REL).u8(b'N').u16(3).u8(b't').u32(2).u8(0xff).u8(0xfe).done(),
        B::new(b'U').u32(REL).u8(b'K').u16(3).u8(b'n').u8(b'n').u8(b'n').u8(b'K').done(),
        B::new(b'D').u32(REL).u8(b'N').done(),
        B::new(b'O').i64(1).u8(b'a').done(),
        B::new(b'E').u8(0).done(),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        assert!(d.decode(bytes).is_err(), "case {i} decoded");
    }
    // The decoder still works afterwards.
    d.decode(&B::new(b'I').u32(REL).u8(b'N').u16(3).text("1").u8(b'n').u8(b'n').done()).unwrap();
}
