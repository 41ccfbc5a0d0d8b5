//! Environment overrides: `DROPSHIPD__SECTION__KEY=value` replaces a scalar key,
//! and `SHIPPING_MODE` replaces `shipping.mode` (the emergency switch of SPEC §3).
//!
//! A variable's text is converted to the type the key has in the defaults, so
//! `DROPSHIPD__SERVER__MAX_BODY_BYTES=1000` becomes an integer while
//! `DROPSHIPD__SHIPPING__PICKUP_LOCATION=123` stays a string. Lists and
//! `[[shiprocket.accounts]]` only come from the file.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::{Config, ConfigError};

const PREFIX: &str = "DROPSHIPD__";

pub(super) fn apply(table: &mut Table, vars: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let defaults = Table::try_from(Config::default())
        .map_err(|e| ConfigError::one(format!("internal: defaults do not serialize: {e}")))?;
    let mut problems = Vec::new();
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((section, key)) = path.split_once("__") else {
            problems.push(format!("{name}: expected DROPSHIPD__SECTION__KEY"));
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        match coerce(&defaults, &section, &key, raw) {
            Ok(value) => set(table, &section, &key, value),
            Err(problem) => problems.push(format!("{name}: {problem}")),
        }
    }
    if let Some(mode) = vars.get("SHIPPING_MODE") {
        match coerce(&defaults, "shipping", "mode", mode) {
            Ok(value) => set(table, "shipping", "mode", value),
            Err(problem) => problems.push(format!("SHIPPING_MODE: {problem}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

fn coerce(defaults: &Table, section: &str, key: &str, raw: &str) -> Result<Value, String> {
    let default = defaults
        .get(section)
        .and_then(Value::as_table)
        .ok_or_else(|| format!("no config section [{section}]"))?
        .get(key)
        .ok_or_else(|| format!("no key {key} in [{section}]"))?;
    let bad = |kind: &str| format!("{section}.{key} takes {kind}, got {raw:?}");
    Ok(match default {
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("true or false")),
        }),
        Value::Array(_) | Value::Table(_) | Value::Datetime(_) => {
            return Err(format!(
                "{section}.{key} is not a scalar; set it in the config file"
            ))
        }
    })
}

fn set(table: &mut Table, section: &str, key: &str, value: Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(section_table) = entry {
        section_table.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ShippingMode};
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_take_the_type_of_the_key() {
        let config = parse(
            "[server]\nmax_body_bytes = 5\n",
            &vars(&[
                ("DROPSHIPD__SERVER__MAX_BODY_BYTES", "1000"),
                ("DROPSHIPD__SHIPPING__PICKUP_LOCATION", "123"),
                ("DROPSHIPD__PROCESSING__PAUSED", "true"),
                ("DROPSHIPD__SHIPPING__DEFAULT_WEIGHT_KG", "1.5"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.max_body_bytes, 1000);
        assert_eq!(config.shipping.pickup_location, "123");
        assert!(config.processing.paused);
        assert_eq!(config.shipping.default_weight_kg, 1.5);
    }

    #[test]
    fn shipping_mode_variable_overrides_the_file() {
        let config = parse(
            "[shipping]\nmode = \"auto\"\n",
            &vars(&[("SHIPPING_MODE", "manual")]),
        )
        .unwrap();
        assert_eq!(config.shipping.mode, ShippingMode::Manual);
        assert!(parse("", &vars(&[("SHIPPING_MODE", "sideways")])).is_err());
    }

    #[test]
    fn every_bad_override_is_reported() {
        let err = parse(
            "",
            &vars(&[
                ("DROPSHIPD__SERVER__NOPE", "1"),
                ("DROPSHIPD__SERVER__MAX_BODY_BYTES", "big"),
                ("DROPSHIPD__SHIPPING__DEFAULT_DIMS_CM", "1,2,3"),
                ("DROPSHIPD__NOSECTION", "1"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(err.to_string().contains("DROPSHIPD__SERVER__NOPE"));
        assert!(err.to_string().contains("takes an integer"));
        assert!(err.to_string().contains("not a scalar"));
    }
}
