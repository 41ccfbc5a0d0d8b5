//! Validation of a storefront checkout (`POST /api/orders`, SPEC §5): a
//! [`ValidCheckout`] exists only if every field is right, and a refusal names
//! every problem by field, so the storefront fixes its request in one pass.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::order::{OrderLine, PaymentMethod};

pub const SUPPORTED_CURRENCIES: &[&str] = &["INR"];
const MAX_ORDER_ID_LEN: usize = 50;
const MAX_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    pub email: String,
    /// Ten digits, without country code.
    pub phone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub state: String,
    pub pincode: String,
    pub country: String,
}

/// Who the order goes to, as stored (sealed) with the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    pub customer: Customer,
    pub shipping_address: Address,
}

/// A checkout that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidCheckout {
    pub order_id: String,
    pub razorpay_order_id: Option<String>,
    pub payment_method: PaymentMethod,
    pub currency: String,
    pub amount_paise: i64,
    pub customer: Customer,
    pub shipping_address: Address,
    pub lines: Vec<OrderLine>,
}

impl ValidCheckout {
    /// A digest of the normalized request: the same checkout sent twice has the
    /// same fingerprint, a changed one does not.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }
}

/// Every problem, keyed by field path (`items[0].quantity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(problem.into());
    }
}

struct Reader<'a> {
    errors: &'a mut FieldErrors,
}

impl Reader<'_> {
    fn text(&mut self, value: Option<&Value>, field: &str, required: bool) -> String {
        match value {
            Some(Value::String(s)) if !s.trim().is_empty() || !required => s.trim().to_owned(),
            Some(Value::String(_)) | None | Some(Value::Null) if required => {
                self.errors.add(field, "is required");
                String::new()
            }
            None | Some(Value::Null) => String::new(),
            Some(_) => {
                self.errors.add(field, "must be a string");
                String::new()
            }
        }
    }

    fn integer(&mut self, value: Option<&Value>, field: &str) -> Option<i64> {
        match value {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Some(i),
                None => {
                    self.errors.add(field, "must be a whole number");
                    None
                }
            },
            None | Some(Value::Null) => {
                self.errors.add(field, "is required");
                None
            }
            Some(_) => {
                self.errors.add(field, "must be a number");
                None
            }
        }
    }
}

/// Ten digits, accepting the `+91`/`91`/`0` prefixes Indian numbers are written with.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = digits
        .strip_prefix("+91")
        .or_else(|| digits.strip_prefix("0091"))
        .or_else(|| {
            (digits.len() == 12)
                .then(|| digits.strip_prefix("91"))
                .flatten()
        })
        .or_else(|| {
            (digits.len() == 11)
                .then(|| digits.strip_prefix('0'))
                .flatten()
        })
        .unwrap_or(&digits);
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'))
        .then(|| digits.to_owned())
}

/// An Indian PIN code: six digits, not starting with 0.
pub fn valid_pincode(pincode: &str) -> bool {
    pincode.len() == 6 && pincode.bytes().all(|b| b.is_ascii_digit()) && !pincode.starts_with('0')
}

fn valid_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ORDER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
}

/// A Razorpay order id: `order_` and letters and digits, nothing that could
/// change a URL path it is put in.
pub fn valid_razorpay_order_id(id: &str) -> bool {
    id.strip_prefix("order_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 40 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Validates a parsed JSON body.
pub fn validate(body: &Value) -> Result<ValidCheckout, FieldErrors> {
    let mut errors = FieldErrors::default();
    if !body.is_object() {
        errors.add("body", "must be a JSON object");
        return Err(errors);
    }
    let mut r = Reader {
        errors: &mut errors,
    };

    let order_id = r.text(body.get("order_id"), "order_id", true);
    let method_text = r.text(body.get("payment_method"), "payment_method", true);
    let currency = r.text(body.get("currency"), "currency", true);
    let amount = r.integer(body.get("amount_paise"), "amount_paise");
    let razorpay_order_id = r.text(body.get("razorpay_order_id"), "razorpay_order_id", false);

    let customer = body.get("customer").cloned().unwrap_or(Value::Null);
    let name = r.text(customer.get("name"), "customer.name", true);
    let email = r.text(customer.get("email"), "customer.email", true);
    let phone_raw = r.text(customer.get("phone"), "customer.phone", true);

    let address = body.get("shipping_address").cloned().unwrap_or(Value::Null);
    if !address.is_object() {
        r.errors.add("shipping_address", "is required");
    }
    let line1 = r.text(address.get("line1"), "shipping_address.line1", true);
    let line2 = r.text(address.get("line2"), "shipping_address.line2", false);
    let city = r.text(address.get("city"), "shipping_address.city", true);
    let state = r.text(address.get("state"), "shipping_address.state", true);
    let pincode = r.text(address.get("pincode"), "shipping_address.pincode", true);
    let country = r.text(address.get("country"), "shipping_address.country", true);

    let mut lines = Vec::new();
    // Each line's quantity × unit price as sent, whatever else is wrong with
    // the line: the amount is checked against these (SPEC §5).
    let mut sent_totals: Vec<Option<i64>> = Vec::new();
    let mut skus = BTreeSet::new();
    match body.get("items") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_LINES => {
            for (i, item) in items.iter().enumerate() {
                let field = |name: &str| format!("items[{i}].{name}");
                let sku = r.text(item.get("sku"), &field("sku"), true);
                let name = r.text(item.get("name"), &field("name"), false);
                let quantity = r.integer(item.get("quantity"), &field("quantity"));
                let unit_price =
                    r.integer(item.get("unit_price_paise"), &field("unit_price_paise"));
                sent_totals.push(quantity.zip(unit_price).and_then(|(q, p)| q.checked_mul(p)));
                let weight_g = match item.get("weight_kg") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(kg) if kg > 0.0 && kg <= 1000.0 => Some((kg * 1000.0).round() as u32),
                        _ => {
                            r.errors
                                .add(field("weight_kg"), "must be above 0 and at most 1000");
                            None
                        }
                    },
                    Some(_) => {
                        r.errors.add(field("weight_kg"), "must be a number");
                        None
                    }
                };
                if !sku.is_empty() && !skus.insert(sku.clone()) {
                    r.errors.add(field("sku"), "appears on more than one line");
                }
                let quantity = match quantity {
                    Some(q) if (1..=10_000).contains(&q) => Some(q as u32),
                    Some(_) => {
                        r.errors
                            .add(field("quantity"), "must be between 1 and 10000");
                        None
                    }
                    None => None,
                };
                if unit_price.is_some_and(|p| p < 0) {
                    r.errors
                        .add(field("unit_price_paise"), "must not be negative");
                }
                if let (Some(quantity), Some(unit_price_paise)) = (quantity, unit_price) {
                    lines.push(OrderLine {
                        sku,
                        name,
                        quantity,
                        unit_price_paise,
                        weight_g,
                    });
                }
            }
        }
        Some(Value::Array(items)) if items.len() > MAX_LINES => {
            r.errors.add("items", format!("at most {MAX_LINES} lines"));
        }
        _ => r.errors.add("items", "must be a non-empty list"),
    }

    let payment_method = match method_text.as_str() {
        "prepaid" => Some(PaymentMethod::Prepaid),
        "cod" => Some(PaymentMethod::Cod),
        "" => None,
        other => {
            r.errors.add(
                "payment_method",
                format!("must be \"prepaid\" or \"cod\", got {other:?}"),
            );
            None
        }
    };
    if !order_id.is_empty() && !valid_order_id(&order_id) {
        r.errors.add(
            "order_id",
            format!("must be 1 to {MAX_ORDER_ID_LEN} letters, digits, '-', '_' or '/'"),
        );
    }
    if payment_method == Some(PaymentMethod::Prepaid) && razorpay_order_id.is_empty() {
        r.errors
            .add("razorpay_order_id", "is required for prepaid orders");
    }
    if !razorpay_order_id.is_empty() && !valid_razorpay_order_id(&razorpay_order_id) {
        r.errors.add(
            "razorpay_order_id",
            "must be a Razorpay order id: order_ followed by letters and digits",
        );
    }
    if !currency.is_empty() && !SUPPORTED_CURRENCIES.contains(&currency.as_str()) {
        r.errors.add(
            "currency",
            format!("unknown currency {currency:?}; supported: INR"),
        );
    }
    // Computable when every line sent a whole quantity and price.
    let sent_total: Option<i64> = (!sent_totals.is_empty())
        .then(|| {
            sent_totals
                .iter()
                .try_fold(0i64, |sum, line| sum.checked_add((*line)?))
        })
        .flatten();
    match (amount, sent_total) {
        (Some(a), _) if a <= 0 => r.errors.add("amount_paise", "must be above 0"),
        (Some(a), Some(total)) if a != total => r.errors.add(
            "amount_paise",
            format!("must equal the sum of the lines as sent ({total})"),
        ),
        _ => {}
    }
    let email_ok = email.contains('@') && email.rsplit('@').next().is_some_and(|d| d.contains('.'));
    if !email.is_empty() && !email_ok {
        r.errors.add("customer.email", "is not an e-mail address");
    }
    let phone = normalize_phone(&phone_raw);
    if !phone_raw.is_empty() && phone.is_none() {
        r.errors
            .add("customer.phone", "must be a 10-digit Indian mobile number");
    }
    if !pincode.is_empty() && !valid_pincode(&pincode) {
        r.errors
            .add("shipping_address.pincode", "must be a 6-digit PIN code");
    }

    match (payment_method, amount, phone) {
        (Some(payment_method), Some(amount_paise), Some(phone)) if errors.0.is_empty() => {
            Ok(ValidCheckout {
                order_id,
                razorpay_order_id: (!razorpay_order_id.is_empty()).then_some(razorpay_order_id),
                payment_method,
                currency,
                amount_paise,
                customer: Customer { name, email, phone },
                shipping_address: Address {
                    line1,
                    line2,
                    city,
                    state,
                    pincode,
                    country,
                },
                lines,
            })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn spec_example() -> Value {
        json!({
          "order_id": "XVC-100231",
          "razorpay_order_id": "order_P1x2y3z4",
          "payment_method": "prepaid",
          "currency": "INR",
          "amount_paise": 149800,
          "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
          "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru",
                                "state": "Karnataka", "pincode": "560001", "country": "India"},
          "items": [{"sku": "TSHIRT-BLK-M", "name": "Black tee M", "quantity": 2,
                     "unit_price_paise": 74900, "weight_kg": 0.25}]
        })
    }

    #[test]
    fn the_spec_example_is_valid() {
        let checkout = validate(&spec_example()).unwrap();
        assert_eq!(checkout.order_id, "XVC-100231");
        assert_eq!(checkout.payment_method, PaymentMethod::Prepaid);
        assert_eq!(checkout.lines[0].weight_g, Some(250));
        assert_eq!(checkout.customer.phone, "9876543210");
    }

    #[test]
    fn every_problem_is_named_by_field() {
        let mut body = spec_example();
        body["amount_paise"] = json!(100);
        body["currency"] = json!("XYZ");
        body["customer"]["phone"] = json!("12345");
        body["shipping_address"]["pincode"] = json!("56001");
        body["items"][0]["quantity"] = json!(0);
        let errors = validate(&body).unwrap_err();
        let fields: Vec<_> = errors.0.keys().cloned().collect();
        assert_eq!(
            fields,
            vec![
                "amount_paise",
                "currency",
                "customer.phone",
                "items[0].quantity",
                "shipping_address.pincode"
            ],
            "{errors:?}"
        );

        let mut body = spec_example();
        body["amount_paise"] = json!(100);
        let errors = validate(&body).unwrap_err();
        assert!(errors.0["amount_paise"][0].contains("149800"));

        let mut body = spec_example();
        body.as_object_mut().unwrap().remove("shipping_address");
        let errors = validate(&body).unwrap_err();
        assert!(errors.0.contains_key("shipping_address"));
        assert!(errors.0.contains_key("shipping_address.line1"));
    }

    #[test]
    fn the_amount_is_checked_against_the_lines_as_sent_even_when_a_line_is_wrong() {
        let mut body = spec_example();
        body["items"] = json!([
            {"sku": "A", "name": "A", "quantity": 1, "unit_price_paise": 1000},
            {"sku": "C", "name": "C", "quantity": 0, "unit_price_paise": 500},
        ]);
        body["amount_paise"] = json!(99_999);
        let errors = validate(&body).unwrap_err();
        assert!(errors.0.contains_key("items[1].quantity"), "{errors:?}");
        assert!(
            errors.0["amount_paise"][0].contains("1000"),
            "1 × 1000 + 0 × 500: {errors:?}"
        );
        body["amount_paise"] = json!(1000);
        let errors = validate(&body).unwrap_err();
        assert!(!errors.0.contains_key("amount_paise"), "{errors:?}");
    }

    #[test]
    fn a_razorpay_order_id_is_order_and_letters_and_digits() {
        assert!(valid_razorpay_order_id("order_P1x2y3z4"));
        for bad in [
            "order_",
            "order_x/../order_A",
            "order_a b",
            "pay_123",
            "order_%2e%2e",
        ] {
            assert!(!valid_razorpay_order_id(bad), "{bad}");
            let mut body = spec_example();
            body["razorpay_order_id"] = json!(bad);
            assert!(validate(&body)
                .unwrap_err()
                .0
                .contains_key("razorpay_order_id"));
        }
    }

    #[test]
    fn cod_needs_no_razorpay_order_and_prepaid_does() {
        let mut body = spec_example();
        body["payment_method"] = json!("cod");
        body.as_object_mut().unwrap().remove("razorpay_order_id");
        assert!(validate(&body).is_ok());
        body["payment_method"] = json!("prepaid");
        assert!(validate(&body)
            .unwrap_err()
            .0
            .contains_key("razorpay_order_id"));
    }

    #[test]
    fn phones_normalize() {
        for raw in [
            "9876543210",
            "+91 98765 43210",
            "919876543210",
            "09876543210",
            "+91-9876543210",
        ] {
            assert_eq!(normalize_phone(raw).as_deref(), Some("9876543210"), "{raw}");
        }
        for raw in ["12345", "0876543210", "98765432101", "abcdefghij"] {
            assert_eq!(normalize_phone(raw), None, "{raw}");
        }
    }

    #[test]
    fn fingerprint_tracks_content() {
        let a = validate(&spec_example()).unwrap();
        let b = validate(&spec_example()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut changed = spec_example();
        changed["customer"]["name"] = json!("Someone Else");
        assert_ne!(validate(&changed).unwrap().fingerprint(), a.fingerprint());
    }
}
