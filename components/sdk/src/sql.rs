//! SQL text for the tables and upserts a component declares.
//!
//! Identifiers are always quoted; values never appear in SQL text (they are
//! bound as binary array parameters), except column defaults, which are
//! rendered as escaped literals.

use crate::types::{Column, ColumnDefault, ColumnType, Conflict, IndexMethod, Table, Value};
use std::fmt::Write;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_IDENT_BYTES: usize = 63;

/// Checks that `name` can be an identifier as it stands (PostgreSQL would
/// silently truncate a longer one).
pub fn check_ident(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an identifier is empty".into());
    }
    if name.len() > MAX_IDENT_BYTES {
        return Err(format!("identifier {name:?} is longer than {MAX_IDENT_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err(format!("identifier {name:?} contains a NUL character"));
    }
    Ok(())
}

/// `name` as a quoted identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A string literal, safe with `standard_conforming_strings = on` (the
/// default since PostgreSQL 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn literal(value: &Value, ty: ColumnType) -> Result<String, String> {
    let text = match value {
        Value::Null => return Ok("NULL".into()),
        Value::Boolean(b) => b.to_string(),
        Value::Int8(i) => i.to_string(),
        Value::Float8(f) => f.to_string(),
        Value::Numeric(s) | Value::Text(s) | Value::Jsonb(s) => s.clone(),
        Value::Uuid((hi, lo)) => format!("{hi:016x}{lo:016x}"),
        Value::Timestamptz(micros) => {
            return Ok(format!("to_timestamp({micros}::numeric / 1000000)"));
        }
        Value::Bytea(bytes) => {
            let mut hex = String::from("\\x");
            for b in bytes {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    };
    if text.contains('\0') {
        return Err("a default value contains a NUL character".into());
    }
    Ok(format!("{}::{}", quote_literal(&text), ty.sql_name()))
}

impl Table {
    /// Checks the declaration: identifiers, a primary key of declared
    /// non-null columns, indexes over declared columns, defaults that fit.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        check_ident(name)?;
        if self.columns.is_empty() {
            return Err(format!("table {name:?} declares no columns"));
        }
        for (i, column) in self.columns.iter().enumerate() {
            check_ident(&column.name)?;
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err(format!("table {name:?} declares column {:?} twice", column.name));
            }
            if column.default == Some(ColumnDefault::Serial) && column.data_type != ColumnType::Int8 {
                return Err(format!("column {:?} in table {name:?} is serial, so it must be int8", column.name));
            }
            if let Some(ColumnDefault::Constant(value)) = &column.default {
                if value.column_type().is_some_and(|t| t != column.data_type) {
                    return Err(format!(
                        "the default of column {:?} in table {name:?} is not of type {}",
                        column.name,
                        column.data_type.sql_name()
                    ));
                }
                literal(value, column.data_type)?;
            }
        }
        for key in &self.primary_key {
            match self.column(key) {
                None => return Err(format!("primary key column {key:?} of table {name:?} is not declared")),
                Some(c) if c.nullable => {
                    return Err(format!("primary key column {key:?} of table {name:?} must be declared not null"));
                }
                Some(_) => {}
            }
        }
        for index in &self.indexes {
            check_ident(&index_name(name, &index.name))?;
            if index.columns.is_empty() {
                return Err(format!("index {:?} of table {name:?} has no columns", index.name));
            }
            for column in &index.columns {
                if self.column(&column.name).is_none() {
                    return Err(format!(
                        "index {:?} of table {name:?} names undeclared column {:?}",
                        index.name, column.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Table {
    /// Checks one row of a plan for this table: as many values as the plan
    /// lists columns, each null only where allowed, of its column's type,
    /// and none that PostgreSQL would refuse ([`crate::check`]).
    /// The plan's columns must have been checked against the table
    /// ([`Upsert::new`]).
    pub fn check_row(&self, columns: &[String], values: &[Value]) -> Result<(), String> {
        if values.len() != columns.len() {
            return Err(format!(
                "the component gave a row {} values for {} columns of table {:?}",
                values.len(),
                columns.len(),
                self.name
            ));
        }
        for (name, value) in columns.iter().zip(values) {
            let column = self.column(name).expect("checked with the plan");
            match value.column_type() {
                None if !column.nullable => {
                    return Err(format!("column {name:?} of table {:?} may not be null", self.name));
                }
                Some(ty) if ty != column.data_type => {
                    return Err(format!(
                        "the component gave column {name:?} of table {:?} a {} value; it is declared {}",
                        self.name,
                        ty.sql_name(),
                        column.data_type.sql_name()
                    ));
                }
                _ => {}
            }
            // A value PostgreSQL would refuse costs its event, not the
            // writer's batch: whatever built the row (the SDK's normalizers
            // check already; a component of a tenant's own may not).
            if let Some(reason) = crate::check::refusal(value) {
                return Err(format!("{name}: {reason}"));
            }
        }
        Ok(())
    }
}

/// The table `name` made from the template `template` among `declared`:
/// the template must be declared as one, no declared table may have the
/// name, and the result must be a valid table.
pub fn template_instance(declared: &[Table], template: &str, name: &str) -> Result<Table, String> {
    let Some(shape) = declared.iter().find(|t| t.name == template && t.template) else {
        return Err(format!("the component's plan names template {template:?}, which it does not declare"));
    };
    if declared.iter().any(|t| t.name == name && !t.template) {
        return Err(format!(
            "the component names table {name:?} of template {template:?}, but it declares a table of that name"
        ));
    }
    let table = shape.instance(name);
    table.validate().map_err(|e| format!("table {name:?} cannot be made from template {template:?}: {e}"))?;
    Ok(table)
}

/// The name the host gives a declared index.
pub fn index_name(table: &str, index: &str) -> String {
    format!("{table}_{index}_idx")
}

fn column_sql(column: &Column) -> Result<String, String> {
    let data_type = match column.default {
        Some(ColumnDefault::Serial) => "bigserial",
        _ => column.data_type.sql_name(),
    };
    let mut sql = format!("{} {data_type}", quote_ident(&column.name));
    if !column.nullable {
        sql.push_str(" NOT NULL");
    }
    match &column.default {
        None | Some(ColumnDefault::Serial) => {}
        Some(ColumnDefault::Now) => sql.push_str(" DEFAULT now()"),
        Some(ColumnDefault::Constant(value)) => {
            sql.push_str(" DEFAULT ");
            sql.push_str(&literal(value, column.data_type)?);
        }
    }
    Ok(sql)
}

/// `ALTER TABLE … ADD COLUMN …` for a column added to a declaration.
pub fn add_column(schema: &str, table: &str, column: &Column) -> Result<String, String> {
    Ok(format!("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}", qualified(schema, table), column_sql(column)?))
}

/// The statements that create `table` and its indexes in `schema` when they
/// are missing. Each is idempotent.
pub fn create_table(schema: &str, table: &Table) -> Result<Vec<String>, String> {
    table.validate()?;
    check_ident(schema)?;
    let target = qualified(schema, &table.name);
    let mut parts = table.columns.iter().map(column_sql).collect::<Result<Vec<_>, _>>()?;
    if !table.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", ident_list(&table.primary_key)));
    }
    let mut statements = vec![format!("CREATE TABLE IF NOT EXISTS {target} ({})", parts.join(", "))];
    for index in &table.indexes {
        let method = match index.method {
            IndexMethod::Btree => "btree",
            IndexMethod::Brin => "brin",
            IndexMethod::Gin => "gin",
        };
        let columns = index
            .columns
            .iter()
            .map(|c| {
                let mut s = quote_ident(&c.name);
                if c.descending {
                    s.push_str(" DESC");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ");
        statements.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {target} USING {method} ({columns})",
            if index.unique { "UNIQUE " } else { "" },
            quote_ident(&index_name(&table.name, &index.name)),
        ));
    }
    Ok(statements)
}

fn ident_list(names: &[String]) -> String {
    names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ")
}

/// A set-based upsert of many rows in one statement.
///
/// Parameter `i` is an array of every row's value for `columns[i]`, of the
/// array type of `param_types[i]`. The statement returns one `bigint` per
/// row (its 1-based position in the arrays) that it wrote: for
/// [`Conflict::DoNothing`] the first row of each new key, for
/// [`Conflict::Update`] the last row of each key. Rows it does not return
/// were duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub sql: String,
    /// The same write without its answer (no positions): for writers that
    /// only need it applied, such as change streams.
    pub write_sql: String,
    pub param_types: Vec<ColumnType>,
    /// The columns rows conflict on (empty: no key, nothing conflicts).
    pub conflict_key: Vec<String>,
    /// The columns a conflict overwrites; `None`: a conflict does nothing.
    pub update_columns: Option<Vec<String>>,
    /// A binary `COPY` of the same columns, when it writes what the upsert
    /// writes whenever it succeeds: the plan's conflicts do nothing (or
    /// nothing can conflict), so a `COPY` that meets no existing key inserts
    /// exactly the rows the upsert would, and one that meets a key fails
    /// whole. Numeric columns travel as text, which binary `COPY` cannot
    /// take, so their plans have none.
    pub copy_sql: Option<String>,
}

/// The columns a plan's rows conflict on: the primary key when the plan
/// gives all of it, else the first unique index over not-null columns that
/// the plan gives (a table whose key is a serial number dedupes on such an
/// index).
pub fn conflict_key<'t>(table: &'t Table, columns: &[String]) -> Result<Vec<String>, String> {
    let key = &table.primary_key;
    let Some(missing) = key.iter().find(|k| !columns.contains(k)) else {
        return Ok(key.clone());
    };
    let covered = |index: &&'t crate::types::Index| {
        index.unique
            && index
                .columns
                .iter()
                .all(|c| columns.contains(&c.name) && table.column(&c.name).is_some_and(|column| !column.nullable))
    };
    match table.indexes.iter().find(covered) {
        Some(index) => Ok(index.columns.iter().map(|c| c.name.clone()).collect()),
        None => Err(format!(
            "a plan for table {:?} leaves out primary key column {missing:?} and gives no unique index's columns",
            table.name
        )),
    }
}

/// How a column travels as a parameter: numeric goes as text, then cast,
/// which leaves the exact decimal parsing to PostgreSQL.
pub fn param_type(ty: ColumnType) -> ColumnType {
    match ty {
        ColumnType::Numeric => ColumnType::Text,
        other => other,
    }
}

impl Upsert {
    /// Checks `columns` and `conflict` against the declared `table` and
    /// renders the statement.
    pub fn new(schema: &str, table: &Table, columns: &[String], conflict: &Conflict) -> Result<Upsert, String> {
        let name = &table.name;
        if columns.is_empty() {
            return Err(format!("a plan for table {name:?} lists no columns"));
        }
        let mut types = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let declared = table.column(column).ok_or_else(|| format!("table {name:?} has no column {column:?}"))?;
            if columns[..i].contains(column) {
                return Err(format!("a plan for table {name:?} lists column {column:?} twice"));
            }
            types.push(declared.data_type);
        }
        for column in &table.columns {
            if !column.nullable && column.default.is_none() && !columns.contains(&column.name) {
                return Err(format!(
                    "a plan for table {name:?} leaves out column {:?}, which is not null and has no default",
                    column.name
                ));
            }
        }
        let key = conflict_key(table, columns)?;
        if let Conflict::Update(set) = conflict {
            for column in set {
                if !columns.contains(column) {
                    return Err(format!("a plan for table {name:?} updates column {column:?}, which it does not list"));
                }
                if key.contains(column) {
                    return Err(format!("a plan for table {name:?} updates primary key column {column:?}"));
                }
            }
        }

        // input(c1 … cn, n): the arrays unnested side by side, n the row position.
        let alias = |i: usize| format!("c{}", i + 1);
        let select = |i: usize| match types[i] {
            ColumnType::Numeric => format!("{}::numeric", alias(i)),
            _ => alias(i),
        };
        let position = |column: &String| columns.iter().position(|c| c == column).expect("checked above");
        let params = (0..columns.len())
            .map(|i| format!("${}::{}[]", i + 1, param_type(types[i]).sql_name()))
            .collect::<Vec<_>>()
            .join(", ");
        let aliases = (0..columns.len()).map(alias).collect::<Vec<_>>().join(", ");
        let selects = (0..columns.len()).map(select).collect::<Vec<_>>().join(", ");
        let target = qualified(schema, name);
        let copyable =
            (matches!(conflict, Conflict::DoNothing) || key.is_empty()) && !types.contains(&ColumnType::Numeric);
        let copy_sql = copyable.then(|| format!("COPY {target} ({}) FROM STDIN (FORMAT binary)", ident_list(columns)));
        let mut sql = format!("WITH input AS (SELECT * FROM unnest({params}) WITH ORDINALITY AS input({aliases}, n)) ");
        let mut write_sql = sql.clone();
        if key.is_empty() {
            // Nothing can conflict: every row is new.
            let insert =
                format!("INSERT INTO {target} ({}) SELECT {selects} FROM input ORDER BY n", ident_list(columns));
            let _ = write!(sql, ", written AS ({insert}) SELECT n FROM input");
            write_sql.push_str(&insert);
            return Ok(Upsert {
                sql,
                write_sql,
                param_types: types.into_iter().map(param_type).collect(),
                conflict_key: Vec::new(),
                update_columns: None,
                copy_sql,
            });
        }
        let key = &key;
        let key_selects = key.iter().map(|k| select(position(k))).collect::<Vec<_>>().join(", ");
        let join = key
            .iter()
            .map(|k| format!("{} = written.{}", select(position(k)), quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let (rows, action, pick) = match conflict {
            Conflict::DoNothing => (
                format!("SELECT {selects} FROM input ORDER BY n"),
                "DO NOTHING".to_owned(),
                format!("SELECT min(n) FROM input JOIN written ON {join} GROUP BY {key_selects}"),
            ),
            // The last row of each key wins, so no row is updated twice.
            Conflict::Update(set) => (
                format!("SELECT DISTINCT ON ({key_selects}) {selects} FROM input ORDER BY {key_selects}, n DESC"),
                if set.is_empty() {
                    // Touch the row so it is returned; nothing changes.
                    format!("DO UPDATE SET {0} = EXCLUDED.{0}", quote_ident(&key[0]))
                } else {
                    format!(
                        "DO UPDATE SET {}",
                        set.iter()
                            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                format!("SELECT max(n) FROM input JOIN written ON {join} GROUP BY {key_selects}"),
            ),
        };
        let insert =
            format!("INSERT INTO {target} ({}) {rows} ON CONFLICT ({}) {action}", ident_list(columns), ident_list(key));
        let _ = write!(sql, ", written AS ({insert} RETURNING {}) {pick}", ident_list(key));
        write_sql.push_str(&insert);
        Ok(Upsert {
            sql,
            write_sql,
            param_types: types.into_iter().map(param_type).collect(),
            conflict_key: key.clone(),
            update_columns: match conflict {
                Conflict::DoNothing => None,
                Conflict::Update(set) => Some(set.clone()),
            },
            copy_sql,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Column, ColumnType::*, Index};

    fn events() -> Table {
        Table {
            name: "events".into(),
            columns: vec![
                Column::new("id", Uuid).not_null(),
                Column::new("amount", Numeric),
                Column::new("at", Timestamptz).not_null().default(ColumnDefault::Now),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![Index::btree("at", &["-at"])],
            template: false,
        }
    }

    /// A value PostgreSQL would refuse costs its row, with the column named.
    #[test]
    fn a_row_postgres_would_refuse_names_its_column() {
        let table = Table {
            name: "t".into(),
            columns: vec![
                Column::new("id", Int8),
                Column::new("payload", Jsonb),
                Column::new("name", Text),
                Column::new("n", Numeric),
            ],
            primary_key: vec![],
            indexes: vec![],
            template: false,
        };
        let columns = |names: &[&str]| names.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let values = [Value::Int8(1), Value::Jsonb(r#"{"n":1e200000}"#.into())];
        let reason = table.check_row(&columns(&["id", "payload"]), &values).unwrap_err();
        assert!(reason.starts_with("payload: the number 1e200000"), "{reason}");
        let reason = table.check_row(&columns(&["name"]), &[Value::Text("a\0b".into())]).unwrap_err();
        assert!(reason.starts_with("name: contains a NUL"), "{reason}");
        assert_eq!(table.check_row(&columns(&["n"]), &[Value::Numeric("1e5".into())]), Ok(()));
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(qualified("s", "t"), r#""s"."t""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(check_ident(&"x".repeat(64)).is_err());
        assert!(check_ident("").is_err());
        assert!(check_ident("a\0b").is_err());
    }

    #[test]
    fn creates_table_and_indexes() {
        let sql = create_table("app", &events()).unwrap();
        assert_eq!(
            sql[0],
            r#"CREATE TABLE IF NOT EXISTS "app"."events" ("id" uuid NOT NULL, "amount" numeric, "at" timestamp with time zone NOT NULL DEFAULT now(), PRIMARY KEY ("id"))"#
        );
        assert_eq!(sql[1], r#"CREATE INDEX IF NOT EXISTS "events_at_idx" ON "app"."events" USING btree ("at" DESC)"#);
    }

    #[test]
    fn rejects_bad_declarations() {
        let mut t = events();
        t.primary_key = vec!["nope".into()];
        assert!(t.validate().unwrap_err().contains("\"nope\""));
        let mut t = events();
        t.columns[0].nullable = true;
        assert!(t.validate().unwrap_err().contains("not null"));
        let mut t = events();
        t.columns.push(Column::new("id", Text));
        assert!(t.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn upsert_binds_arrays_and_returns_positions() {
        let cols = vec!["id".to_string(), "amount".to_string()];
        let up = Upsert::new("app", &events(), &cols, &Conflict::DoNothing).unwrap();
        assert_eq!(up.param_types, vec![Uuid, Text]);
        assert_eq!(
            up.sql,
            r#"WITH input AS (SELECT * FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS input(c1, c2, n)) , written AS (INSERT INTO "app"."events" ("id", "amount") SELECT c1, c2::numeric FROM input ORDER BY n ON CONFLICT ("id") DO NOTHING RETURNING "id") SELECT min(n) FROM input JOIN written ON c1 = written."id" GROUP BY c1"#
        );
        assert_eq!(
            up.write_sql,
            r#"WITH input AS (SELECT * FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS input(c1, c2, n)) INSERT INTO "app"."events" ("id", "amount") SELECT c1, c2::numeric FROM input ORDER BY n ON CONFLICT ("id") DO NOTHING"#
        );
    }

    #[test]
    fn copy_only_where_it_writes_what_the_upsert_writes() {
        let copy = |cols: &[&str], conflict: Conflict| {
            let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
            Upsert::new("app", &events(), &cols, &conflict).unwrap().copy_sql
        };
        assert_eq!(
            copy(&["id", "at"], Conflict::DoNothing).as_deref(),
            Some(r#"COPY "app"."events" ("id", "at") FROM STDIN (FORMAT binary)"#)
        );
        // An update changes existing rows, which COPY cannot.
        assert_eq!(copy(&["id", "at"], Conflict::Update(vec!["at".into()])), None);
        // Numeric travels as text, which binary COPY cannot take.
        assert_eq!(copy(&["id", "amount"], Conflict::DoNothing), None);
    }

    #[test]
    fn upsert_checks_the_plan() {
        let t = events();
        let err = |cols: &[&str], conflict: Conflict| {
            let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
            Upsert::new("app", &t, &cols, &conflict).unwrap_err()
        };
        assert!(err(&["amount"], Conflict::DoNothing).contains("\"id\""));
        assert!(err(&["id", "bogus"], Conflict::DoNothing).contains("no column \"bogus\""));
        assert!(err(&["id", "id"], Conflict::DoNothing).contains("twice"));
        assert!(err(&["id", "amount"], Conflict::Update(vec!["id".into()])).contains("primary key"));
    }

    #[test]
    fn a_row_with_a_value_postgres_refuses_is_refused_by_name() {
        let t = events();
        let columns = vec!["id".to_owned(), "amount".to_owned()];
        assert_eq!(t.check_row(&columns, &[Value::uuid(1), Value::Numeric("1e131071".into())]), Ok(()));
        let e = t.check_row(&columns, &[Value::uuid(1), Value::Numeric("1e200000".into())]).unwrap_err();
        assert!(e.starts_with("amount: the number 1e200000 is out of"), "{e}");
    }

    #[test]
    fn a_serial_key_table_conflicts_on_its_unique_index() {
        let mut unique = Index::btree("record", &["record_id"]);
        unique.unique = true;
        let logs = Table {
            name: "logs".into(),
            columns: vec![
                Column::new("id", Int8).not_null().default(ColumnDefault::Serial),
                Column::new("record_id", Uuid).not_null(),
                Column::new("event", Text).not_null(),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![unique],
            template: false,
        };
        let sql = create_table("app", &logs).unwrap();
        assert!(
            sql[0].starts_with(r#"CREATE TABLE IF NOT EXISTS "app"."logs" ("id" bigserial NOT NULL, "record_id" uuid"#)
        );
        let cols = vec!["record_id".to_string(), "event".to_string()];
        let up = Upsert::new("app", &logs, &cols, &Conflict::DoNothing).unwrap();
        assert!(up.sql.contains(r#"ON CONFLICT ("record_id") DO NOTHING RETURNING "record_id""#), "{}", up.sql);
        // Without a unique index there is nothing to conflict on.
        let mut plain = logs.clone();
        plain.indexes[0].unique = false;
        let err = Upsert::new("app", &plain, &cols, &Conflict::DoNothing).unwrap_err();
        assert!(err.contains("leaves out primary key column \"id\""), "{err}");
        let mut bad = logs.clone();
        bad.columns[2].default = Some(ColumnDefault::Serial);
        assert!(bad.validate().unwrap_err().contains("must be int8"));
    }

    #[test]
    fn an_all_key_table_overwrites_by_touching_its_key() {
        let pairs = Table {
            name: "pairs".into(),
            columns: vec![Column::new("a", Text).not_null(), Column::new("b", Text).not_null()],
            primary_key: vec!["a".into(), "b".into()],
            indexes: vec![],
            template: false,
        };
        let cols = vec!["a".to_string(), "b".to_string()];
        let up = Upsert::new("app", &pairs, &cols, &Conflict::Update(vec![])).unwrap();
        assert!(up.sql.contains(r#"ON CONFLICT ("a", "b") DO UPDATE SET "a" = EXCLUDED."a""#), "{}", up.sql);
        assert!(up.sql.contains("SELECT DISTINCT ON (c1, c2)"), "duplicates in a batch merge first: {}", up.sql);
    }
}
