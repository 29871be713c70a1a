//! Table names as the configuration gives them.

use postgres_protocol::escape::escape_identifier;

use crate::error::{Error, Result};

/// A table name from the configuration: `table` (in `public`) or `schema.table`.
/// The names are exact (case-sensitive), as stored in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn parse(text: &str) -> Result<TableName> {
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (s, n),
            None => ("public", text),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') || text.contains('\0') {
            return Err(Error::Config(format!("table {text:?} is not `table` or `schema.table`")));
        }
        Ok(TableName { schema: schema.to_string(), name: name.to_string() })
    }

    /// `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", escape_identifier(&self.schema), escape_identifier(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(TableName::parse("orders").unwrap().quoted(), r#""public"."orders""#);
        assert_eq!(TableName::parse("Inv.Items").unwrap().quoted(), r#""Inv"."Items""#);
        assert_eq!(TableName::parse(r#"a.we"ird"#).unwrap().quoted(), r#""a"."we""ird""#);
        for bad in ["", ".x", "x.", "a.b.c"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
