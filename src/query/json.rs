//! Results as JSON for an HTTP client: one rule per column type, so a column never switches
//! between numbers and strings. Decimals (money) are exact decimal strings (`"12.50"`),
//! 64-bit integers (ids, counts, sums) are strings (a JavaScript number holds 53 bits),
//! smaller integers, floats and booleans are numbers (a float that is not finite is
//! `null`), everything else is its text. Columns that share a name (a self join) are told
//! apart by their table (`a.user_id`, `b.user_id`), or refused when they cannot be.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeListArray, GenericListArray, StructArray,
};
use datafusion::arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int8Type, UInt16Type,
    UInt32Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use serde_json::{Map, Value};

use super::{is_explain, read_only, read_only_message, QueryError, Session};

/// A result as JSON rows, cut at a number of rows or of bytes.
#[derive(Debug)]
pub struct JsonRows {
    pub columns: Vec<String>,
    /// One object per row; a null is left out of its row.
    pub rows: Vec<Value>,
    /// Rows were left out: more than the row limit, or more than the byte limit.
    pub truncated: bool,
    /// The statement was an `EXPLAIN`: the rows are its plan, which names files.
    pub explain: bool,
}

impl Session {
    /// Runs one read-only statement; keeps at most `limit` rows and stops adding rows once
    /// their JSON would exceed `max_bytes` (an error if the first row alone does).
    pub async fn json_rows(
        &self,
        sql: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<JsonRows, QueryError> {
        let df = self
            .ctx
            .sql_with_options(sql, read_only())
            .await
            .map_err(read_only_message)?;
        let columns = column_names(
            df.schema()
                .iter()
                .map(|(q, f)| (q.map(|q| q.to_string()), f.name().clone())),
        )?;
        let explain = is_explain(&df);
        let df = match explain {
            true => df,
            false => df.limit(0, Some(limit + 1))?,
        };
        let batches = df.collect().await?;
        let mut rows = Vec::new();
        let mut bytes = 2;
        let mut truncated = false;
        'batches: for batch in &batches {
            let converters = batch
                .columns()
                .iter()
                .map(|a| Converter::new(a.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            for i in 0..batch.num_rows() {
                if rows.len() == limit {
                    truncated = true;
                    break 'batches;
                }
                let mut row = Map::new();
                for (name, c) in columns.iter().zip(&converters) {
                    let v = c.value(i);
                    if !v.is_null() {
                        row.insert(name.clone(), v);
                    }
                }
                let row = Value::Object(row);
                let size = row.to_string().len() + 1;
                if bytes + size > max_bytes {
                    if rows.is_empty() {
                        return Err(plan(format!(
                            "one row of this result is larger than the {max_bytes}-byte answer limit"
                        )));
                    }
                    truncated = true;
                    break 'batches;
                }
                bytes += size;
                rows.push(row);
            }
        }
        Ok(JsonRows {
            columns,
            rows,
            truncated,
            explain,
        })
    }
}

fn plan(message: String) -> QueryError {
    QueryError::Sql(DataFusionError::Plan(message))
}

/// Unique output names: a name two columns share becomes `table.name` for each of them.
fn column_names(
    fields: impl Iterator<Item = (Option<String>, String)>,
) -> Result<Vec<String>, QueryError> {
    let fields: Vec<(Option<String>, String)> = fields.collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, name) in &fields {
        *count.entry(name.as_str()).or_default() += 1;
    }
    let names: Vec<String> = fields
        .iter()
        .map(|(q, name)| match q {
            Some(q) if count[name.as_str()] > 1 => format!("{q}.{name}"),
            _ => name.clone(),
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(first) = seen.insert(name, i) {
            return Err(plan(format!(
                "columns {} and {} are both named `{name}`: give them different names with AS",
                first + 1,
                i + 1
            )));
        }
    }
    Ok(names)
}

/// Turns the values of one column into JSON by the column's type.
enum Converter {
    Null,
    Bool(BooleanArray),
    /// Integers of at most 32 bits and floats, as numbers.
    Number(Arc<dyn Array>),
    List(Arc<dyn Array>),
    Struct(StructArray, Vec<Converter>),
    /// Everything else (decimals, 64-bit integers, text, times) as its text.
    Text(Vec<Option<String>>),
}

impl Converter {
    fn new(array: Arc<dyn Array>) -> Result<Self, QueryError> {
        Ok(match array.data_type() {
            DataType::Null => Converter::Null,
            DataType::Boolean => Converter::Bool(array.as_boolean().clone()),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64 => Converter::Number(array),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
                Converter::List(array)
            }
            DataType::Struct(_) => {
                let s = array.as_struct().clone();
                let children = s
                    .columns()
                    .iter()
                    .map(|c| Converter::new(c.clone()))
                    .collect::<Result<_, _>>()?;
                Converter::Struct(s, children)
            }
            _ => {
                let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
                Converter::Text(
                    (0..array.len())
                        .map(|i| (!array.is_null(i)).then(|| f.value(i).to_string()))
                        .collect(),
                )
            }
        })
    }

    fn value(&self, i: usize) -> Value {
        match self {
            Converter::Null => Value::Null,
            Converter::Bool(a) => match a.is_null(i) {
                true => Value::Null,
                false => Value::Bool(a.value(i)),
            },
            Converter::Number(a) => number(a.as_ref(), i),
            Converter::List(a) => list(a.as_ref(), i),
            Converter::Struct(s, children) => {
                if s.is_null(i) {
                    return Value::Null;
                }
                let mut m = Map::new();
                for (field, c) in s.fields().iter().zip(children) {
                    m.insert(field.name().clone(), c.value(i));
                }
                Value::Object(m)
            }
            Converter::Text(text) => text[i].clone().map_or(Value::Null, Value::String),
        }
    }
}

fn number(a: &dyn Array, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::Float16 => float(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => float(f64::from(a.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
        _ => Value::Null,
    }
}

fn list(a: &dyn Array, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    let items = match a.data_type() {
        DataType::List(_) => a
            .as_any()
            .downcast_ref::<GenericListArray<i32>>()
            .map(|l| l.value(i)),
        DataType::LargeList(_) => a
            .as_any()
            .downcast_ref::<GenericListArray<i64>>()
            .map(|l| l.value(i)),
        DataType::FixedSizeList(_, _) => a
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .map(|l| l.value(i)),
        _ => None,
    };
    let Some(items) = items else {
        return Value::Null;
    };
    match Converter::new(items.clone()) {
        Ok(c) => Value::Array((0..items.len()).map(|j| c.value(j)).collect()),
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_names_are_qualified_and_unresolvable_ones_refused() {
        let q = |q: &str| Some(q.to_string());
        let names = column_names(
            [
                (q("a"), "user_id".to_string()),
                (q("b"), "user_id".to_string()),
                (q("a"), "segment".to_string()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(names, ["a.user_id", "b.user_id", "segment"]);
        let e = column_names([(None, "x".to_string()), (None, "x".to_string())].into_iter())
            .unwrap_err()
            .to_string();
        assert!(e.contains("columns 1 and 2 are both named `x`"), "{e}");
    }
}
