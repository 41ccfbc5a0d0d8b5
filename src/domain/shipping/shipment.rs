//! A shipment in dropshipd's terms: what goes to Shiprocket for an order, and
//! what Shiprocket's answers mean for it. The wire format (rupees, integer
//! phones and PIN codes, Shiprocket's keys) is `clients::shiprocket`'s; this
//! module only decides the content.

use serde::{Deserialize, Serialize};

use crate::domain::checkout::CustomerRecord;
use crate::domain::clock::rfc3339;
use crate::domain::order::{OrderSnapshot, PaymentMethod};
use crate::domain::stock::ProductFacts;

/// A shipment to create.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipmentRequest {
    /// Our order id: Shiprocket's channel `order_id`.
    pub channel_order_id: String,
    /// `yyyy-mm-dd hh:mm`.
    pub order_date: String,
    pub pickup_location: String,
    pub cod: bool,
    pub amount_paise: i64,
    pub customer_name: String,
    pub email: String,
    pub phone: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub state: String,
    pub pincode: String,
    pub country: String,
    pub items: Vec<ShipmentItem>,
    pub weight_kg: f64,
    pub dims_cm: [f64; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShipmentItem {
    pub sku: String,
    pub name: String,
    pub units: u32,
    pub unit_price_paise: i64,
    pub hsn: Option<String>,
}

/// What a parcel is when its SKUs say nothing (`[shipping]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct ParcelDefaults {
    pub pickup_location: String,
    pub weight_kg: f64,
    pub dims_cm: [f64; 3],
}

impl ShipmentRequest {
    /// The shipment of `order` to `to`. `facts` holds each line's product
    /// facts, in line order; a line's own weight wins over its SKU's, and the
    /// defaults fill what neither gives.
    pub fn for_order(
        order: &OrderSnapshot,
        to: &CustomerRecord,
        facts: &[ProductFacts],
        defaults: &ParcelDefaults,
    ) -> Self {
        let mut weight_kg = 0.0;
        let mut dims = None;
        let mut items = Vec::with_capacity(order.lines.len());
        let no_facts = ProductFacts::default();
        for (index, line) in order.lines.iter().enumerate() {
            let facts = facts.get(index).unwrap_or(&no_facts);
            let unit_kg = line
                .weight_g
                .map(|g| f64::from(g) / 1000.0)
                .or(facts.weight_kg)
                .unwrap_or(defaults.weight_kg);
            weight_kg += unit_kg * f64::from(line.quantity);
            if dims.is_none() {
                dims = facts
                    .dims_cm
                    .as_ref()
                    .filter(|d| d.len() == 3)
                    .map(|d| [d[0], d[1], d[2]]);
            }
            items.push(ShipmentItem {
                sku: line.sku.clone(),
                name: facts.name.clone().unwrap_or_else(|| line.name.clone()),
                units: line.quantity,
                unit_price_paise: line.unit_price_paise,
                hsn: facts.hsn.clone(),
            });
        }
        // Shiprocket's `yyyy-mm-dd hh:mm`, from the time it was paid.
        let order_date = rfc3339(order.shipping.paid_at_ms.unwrap_or(order.created_at_ms))
            .replace('T', " ")
            .chars()
            .take(16)
            .collect();
        let (customer, address) = (&to.customer, &to.shipping_address);
        Self {
            channel_order_id: order.order_id.clone(),
            order_date,
            pickup_location: defaults.pickup_location.clone(),
            cod: order.payment_method == PaymentMethod::Cod,
            amount_paise: order.amount_paise,
            customer_name: customer.name.clone(),
            email: customer.email.clone(),
            phone: customer.phone.clone(),
            line1: address.line1.clone(),
            line2: address.line2.clone(),
            city: address.city.clone(),
            state: address.state.clone(),
            pincode: address.pincode.clone(),
            country: address.country.clone(),
            items,
            weight_kg: if weight_kg > 0.0 {
                weight_kg
            } else {
                defaults.weight_kg
            },
            dims_cm: dims.unwrap_or(defaults.dims_cm),
        }
    }
}

/// Shiprocket's ids for a created order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedShipment {
    pub sr_order_id: i64,
    pub shipment_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedAwb {
    pub awb_code: String,
    pub courier_name: String,
}

/// An order a search by channel order id found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundOrder {
    pub sr_order_id: i64,
    pub channel_order_id: String,
    pub cancelled: bool,
    pub shipment_id: Option<i64>,
    pub awb: Option<String>,
    pub courier: Option<String>,
}

/// The live (not cancelled) Shiprocket orders for `channel_order_id` among
/// `found`: a search matches more than the exact id.
pub fn live_matches<'a>(
    found: &'a [FoundOrder],
    channel_order_id: &'a str,
) -> impl Iterator<Item = &'a FoundOrder> + 'a {
    found
        .iter()
        .filter(move |f| !f.cancelled && f.channel_order_id == channel_order_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::checkout::{Address, Customer};
    use crate::domain::order::{genesis, OrderEvent, OrderLine};

    fn order(lines: Vec<OrderLine>) -> OrderSnapshot {
        let created = OrderEvent::Created {
            razorpay_order_id: None,
            payment_method: PaymentMethod::Cod,
            currency: "INR".into(),
            amount_paise: 149_800,
            lines,
            reserved_until_ms: None,
        };
        let mut order = genesis("XVC-7", &created, 1_764_064_800_000).unwrap();
        order.shipping.paid_at_ms = Some(1_764_065_100_000);
        order
    }

    fn line(sku: &str, quantity: u32, weight_g: Option<u32>) -> OrderLine {
        OrderLine {
            sku: sku.into(),
            name: format!("{sku} name"),
            quantity,
            unit_price_paise: 74_900,
            weight_g,
        }
    }

    fn to() -> CustomerRecord {
        CustomerRecord {
            customer: Customer {
                name: "Asha Rao".into(),
                email: "asha@example.com".into(),
                phone: "9876543210".into(),
            },
            shipping_address: Address {
                line1: "12 MG Road".into(),
                line2: String::new(),
                city: "Bengaluru".into(),
                state: "Karnataka".into(),
                pincode: "560001".into(),
                country: "India".into(),
            },
        }
    }

    fn defaults() -> ParcelDefaults {
        ParcelDefaults {
            pickup_location: "Primary".into(),
            weight_kg: 0.5,
            dims_cm: [20.0, 15.0, 10.0],
        }
    }

    #[test]
    fn weights_come_from_the_line_then_the_sku_then_the_default() {
        let facts = vec![
            ProductFacts {
                weight_kg: Some(9.0),
                ..ProductFacts::default()
            },
            ProductFacts {
                name: Some("Catalogue name".into()),
                weight_kg: Some(1.25),
                dims_cm: Some(vec![30.0, 20.0, 5.0]),
                hsn: Some("6109".into()),
            },
        ];
        let order = order(vec![
            line("A", 2, Some(250)),
            line("B", 1, None),
            line("C", 2, None),
        ]);
        let request = ShipmentRequest::for_order(&order, &to(), &facts, &defaults());
        // 2 × 0.25 (line) + 1 × 1.25 (SKU) + 2 × 0.5 (default)
        assert!(
            (request.weight_kg - 2.75).abs() < 1e-9,
            "{}",
            request.weight_kg
        );
        assert_eq!(request.dims_cm, [30.0, 20.0, 5.0]);
        assert_eq!(request.items[1].name, "Catalogue name");
        assert_eq!(request.items[1].hsn.as_deref(), Some("6109"));
        assert_eq!(request.items[2].name, "C name");
        assert!(request.cod);
        assert_eq!(request.order_date, "2025-11-25 10:05");
        assert_eq!(
            (request.pincode.as_str(), request.city.as_str()),
            ("560001", "Bengaluru")
        );
    }

    #[test]
    fn a_parcel_without_facts_takes_the_defaults() {
        let request = ShipmentRequest::for_order(&order(vec![]), &to(), &[], &defaults());
        assert_eq!(request.weight_kg, 0.5);
        assert_eq!(request.dims_cm, [20.0, 15.0, 10.0]);
    }

    #[test]
    fn only_live_exact_matches_count() {
        let found = |id: i64, channel: &str, cancelled: bool| FoundOrder {
            sr_order_id: id,
            channel_order_id: channel.into(),
            cancelled,
            shipment_id: None,
            awb: None,
            courier: None,
        };
        let list = vec![
            found(1, "XVC-7", true),
            found(2, "XVC-7", false),
            found(3, "XVC-77", false),
        ];
        let ids: Vec<i64> = live_matches(&list, "XVC-7")
            .map(|f| f.sr_order_id)
            .collect();
        assert_eq!(ids, vec![2]);
    }
}
