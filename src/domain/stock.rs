//! Stock arithmetic (SPEC §7): a SKU's `on_hand` and `reserved`, and the changes
//! that move them. Every change either keeps `available = on_hand - reserved`
//! at zero or above, with `reserved` never negative, or is refused; each
//! accepted change reports its deltas, which become the ledger row committed
//! with the level.

use serde::Serialize;

use super::order::{OrderLine, OrderState};

/// Facts about a product that shipping reads (SPEC §9, `PUT /admin/stock/{sku}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProductFacts {
    pub name: Option<String>,
    pub weight_kg: Option<f64>,
    pub dims_cm: Option<Vec<f64>>,
    pub hsn: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStatus {
    Held,
    Sold,
    Released,
    Returned,
}

impl AllocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Sold => "sold",
            Self::Released => "released",
            Self::Returned => "returned",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Held, Self::Sold, Self::Released, Self::Returned]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What a stock step does to the order's allocation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationStep {
    /// An operator's change: no order involved.
    None,
    /// A new hold for an order; a repeat (the row exists) changes nothing.
    Create { order_id: String, quantity: i64 },
    /// Moves the row from one of `from` to `to`; from any other status, nothing happens.
    Move {
        order_id: String,
        from: Vec<AllocationStatus>,
        to: AllocationStatus,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockLevel {
    pub fn available(self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// A change to one SKU's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// Hold units for a checkout.
    Reserve(i64),
    /// Give held units back (expiry, cancellation before payment).
    Release(i64),
    /// A paid checkout: held units leave both `reserved` and `on_hand`.
    SellReserved(i64),
    /// A late payment after expiry: sell units that were not held.
    SellUnreserved(i64),
    /// Units come back (cancellation of an unshipped sale).
    Restock(i64),
    /// An operator's correction, by a signed amount.
    Adjust(i64),
    /// An operator's count: `on_hand` becomes this.
    Set(i64),
}

/// The ledger view of a change: how much each figure moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockDelta {
    pub on_hand: i64,
    pub reserved: i64,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum StockError {
    #[error("only {available} available, {wanted} wanted")]
    Insufficient { available: i64, wanted: i64 },
    #[error("quantity must be positive, got {0}")]
    NonPositive(i64),
    #[error("only {reserved} reserved, cannot release or sell {wanted}")]
    NotReserved { reserved: i64, wanted: i64 },
    #[error("on_hand {on_hand} would fall below the {reserved} units reserved")]
    BelowReserved { on_hand: i64, reserved: i64 },
}

/// The level after `change`, with its deltas, or why it is refused.
pub fn apply(
    level: StockLevel,
    change: StockChange,
) -> Result<(StockLevel, StockDelta), StockError> {
    let positive = |q: i64| {
        if q > 0 {
            Ok(q)
        } else {
            Err(StockError::NonPositive(q))
        }
    };
    let delta = match change {
        StockChange::Reserve(q) => {
            let q = positive(q)?;
            if level.available() < q {
                return Err(StockError::Insufficient {
                    available: level.available(),
                    wanted: q,
                });
            }
            StockDelta {
                on_hand: 0,
                reserved: q,
            }
        }
        StockChange::Release(q) | StockChange::SellReserved(q) => {
            let q = positive(q)?;
            if level.reserved < q {
                return Err(StockError::NotReserved {
                    reserved: level.reserved,
                    wanted: q,
                });
            }
            match change {
                StockChange::Release(_) => StockDelta {
                    on_hand: 0,
                    reserved: -q,
                },
                _ => StockDelta {
                    on_hand: -q,
                    reserved: -q,
                },
            }
        }
        StockChange::SellUnreserved(q) => {
            let q = positive(q)?;
            if level.available() < q {
                return Err(StockError::Insufficient {
                    available: level.available(),
                    wanted: q,
                });
            }
            StockDelta {
                on_hand: -q,
                reserved: 0,
            }
        }
        StockChange::Restock(q) => StockDelta {
            on_hand: positive(q)?,
            reserved: 0,
        },
        StockChange::Adjust(delta) => StockDelta {
            on_hand: delta,
            reserved: 0,
        },
        StockChange::Set(on_hand) => StockDelta {
            on_hand: on_hand - level.on_hand,
            reserved: 0,
        },
    };
    let next = StockLevel {
        on_hand: level.on_hand + delta.on_hand,
        reserved: level.reserved + delta.reserved,
    };
    if next.available() < 0 {
        return Err(StockError::BelowReserved {
            on_hand: next.on_hand,
            reserved: next.reserved,
        });
    }
    Ok((next, delta))
}

impl StockLevel {
    /// The level with `delta` applied.
    pub fn plus(self, delta: StockDelta) -> StockLevel {
        StockLevel {
            on_hand: self.on_hand + delta.on_hand,
            reserved: self.reserved + delta.reserved,
        }
    }
}

impl StockDelta {
    pub fn plus(self, other: StockDelta) -> StockDelta {
        StockDelta {
            on_hand: self.on_hand + other.on_hand,
            reserved: self.reserved + other.reserved,
        }
    }
}

/// The level to decide a change against while `pending` changes are decided
/// but not yet committed, each of which may yet commit or not, in any order.
///
/// Its `available` is the committed figure less every pending change that
/// lowers it (a hold, a sale of units not held), and its `reserved` the
/// committed figure less every pending change that lowers that (a release, a
/// sale of held units); what pending changes would add counts only once it
/// is committed. A change [`apply`] allows against this level is therefore
/// allowed whichever of the pending ones land: decisions never wait for
/// commits, and a failed commit leaves the others standing. Only `Set`, whose
/// delta depends on the level itself, needs the expected level
/// ([`expected_level`]) instead.
pub fn deciding_level(
    committed: StockLevel,
    pending: impl IntoIterator<Item = StockDelta>,
) -> StockLevel {
    let (mut available, mut reserved) = (committed.available(), committed.reserved);
    for delta in pending {
        available += (delta.on_hand - delta.reserved).min(0);
        reserved += delta.reserved.min(0);
    }
    StockLevel {
        on_hand: available + reserved,
        reserved,
    }
}

/// The level once every pending change has committed.
pub fn expected_level(
    committed: StockLevel,
    pending: impl IntoIterator<Item = StockDelta>,
) -> StockLevel {
    pending.into_iter().fold(committed, StockLevel::plus)
}

/// One stock change an order's transition implies for one of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineMove {
    pub sku: String,
    pub change: StockChange,
    pub allocation: AllocationStep,
    pub reason: &'static str,
}

fn line_moves(
    order_id: &str,
    lines: &[OrderLine],
    make: impl Fn(i64) -> StockChange,
    from: &[AllocationStatus],
    to: AllocationStatus,
    reason: &'static str,
) -> Vec<LineMove> {
    lines
        .iter()
        .map(|line| LineMove {
            sku: line.sku.clone(),
            change: make(i64::from(line.quantity)),
            allocation: AllocationStep::Move {
                order_id: order_id.to_owned(),
                from: from.to_vec(),
                to,
            },
            reason,
        })
        .collect()
}

/// The holds of a new checkout, every line.
pub fn reserve_moves(order_id: &str, lines: &[OrderLine]) -> Vec<LineMove> {
    lines
        .iter()
        .map(|line| LineMove {
            sku: line.sku.clone(),
            change: StockChange::Reserve(i64::from(line.quantity)),
            allocation: AllocationStep::Create {
                order_id: order_id.to_owned(),
                quantity: i64::from(line.quantity),
            },
            reason: "reserve",
        })
        .collect()
}

/// The stock an order's move from `from` to `to` takes or gives back (SPEC
/// §6, §7), committed with the move itself: a reader who sees `paid` sees
/// the sale. A refund or return after the parcel left leaves the units where
/// they are. Every move is conditional on the allocation's status, so
/// repeating one changes nothing.
pub fn transition_moves(
    order_id: &str,
    lines: &[OrderLine],
    from: OrderState,
    to: OrderState,
) -> Vec<LineMove> {
    use AllocationStatus as A;
    let sold = |state: OrderState| state.holds_unshipped_sale();
    match (from, to) {
        (from, to) if from.holds_reservation() && sold(to) => line_moves(
            order_id,
            lines,
            StockChange::SellReserved,
            &[A::Held],
            A::Sold,
            "sale",
        ),
        (OrderState::Expired, to) if sold(to) => line_moves(
            order_id,
            lines,
            StockChange::SellUnreserved,
            &[A::Released],
            A::Sold,
            "late_sale",
        ),
        // Refunded straight from a hold: paid and refunded in one step (a
        // refund that waited for its payment).
        (from, OrderState::Expired | OrderState::Cancelled | OrderState::Refunded)
            if from.holds_reservation() =>
        {
            line_moves(
                order_id,
                lines,
                StockChange::Release,
                &[A::Held],
                A::Released,
                "release",
            )
        }
        (from, OrderState::Cancelled | OrderState::Refunded) if sold(from) => line_moves(
            order_id,
            lines,
            StockChange::Restock,
            &[A::Sold],
            A::Returned,
            "cancel_restock",
        ),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reserve_sell_release() {
        let level = StockLevel {
            on_hand: 5,
            reserved: 0,
        };
        let (level, d) = apply(level, StockChange::Reserve(3)).unwrap();
        assert_eq!(
            (level.available(), d),
            (
                2,
                StockDelta {
                    on_hand: 0,
                    reserved: 3
                }
            )
        );
        assert_eq!(
            apply(level, StockChange::Reserve(3)),
            Err(StockError::Insufficient {
                available: 2,
                wanted: 3
            })
        );
        let (level, _) = apply(level, StockChange::SellReserved(2)).unwrap();
        assert_eq!(
            level,
            StockLevel {
                on_hand: 3,
                reserved: 1
            }
        );
        let (level, _) = apply(level, StockChange::Release(1)).unwrap();
        assert_eq!(
            level,
            StockLevel {
                on_hand: 3,
                reserved: 0
            }
        );
        assert!(apply(level, StockChange::Release(1)).is_err());
        assert!(apply(level, StockChange::Reserve(0)).is_err());
    }

    #[test]
    fn operators_cannot_count_below_what_is_reserved() {
        let level = StockLevel {
            on_hand: 5,
            reserved: 4,
        };
        assert!(apply(level, StockChange::Set(3)).is_err());
        assert!(apply(level, StockChange::Adjust(-2)).is_err());
        let (level, d) = apply(level, StockChange::Set(10)).unwrap();
        assert_eq!((level.on_hand, d.on_hand), (10, 5));
    }

    fn change() -> impl Strategy<Value = StockChange> {
        prop_oneof![
            (1i64..20).prop_map(StockChange::Reserve),
            (1i64..20).prop_map(StockChange::Release),
            (1i64..20).prop_map(StockChange::SellReserved),
            (1i64..20).prop_map(StockChange::SellUnreserved),
            (1i64..20).prop_map(StockChange::Restock),
            (-20i64..20).prop_map(StockChange::Adjust),
            (0i64..60).prop_map(StockChange::Set),
        ]
    }

    fn lines() -> Vec<OrderLine> {
        vec![OrderLine {
            sku: "TEE".into(),
            name: "Tee".into(),
            quantity: 2,
            unit_price_paise: 100,
            weight_g: None,
        }]
    }

    #[test]
    fn a_payment_sells_the_hold_in_the_same_step_as_the_transition() {
        use OrderState as S;
        let changes = |from, to| -> Vec<StockChange> {
            transition_moves("O", &lines(), from, to)
                .into_iter()
                .map(|m| m.change)
                .collect()
        };
        // Paid and queued for shipping in one commit: still one sale.
        assert_eq!(
            changes(S::PendingPayment, S::AwaitingShipment),
            vec![StockChange::SellReserved(2)]
        );
        assert_eq!(
            changes(S::PaymentFailed, S::Paid),
            vec![StockChange::SellReserved(2)]
        );
        assert_eq!(
            changes(S::Expired, S::ManualRequired),
            vec![StockChange::SellUnreserved(2)]
        );
        assert_eq!(changes(S::Expired, S::OutOfStock), vec![]);
        assert_eq!(
            changes(S::PendingPayment, S::Expired),
            vec![StockChange::Release(2)]
        );
        assert_eq!(
            changes(S::ReadyToShip, S::Cancelled),
            vec![StockChange::Restock(2)]
        );
        assert_eq!(
            changes(S::AwaitingShipment, S::Refunded),
            vec![StockChange::Restock(2)]
        );
        assert_eq!(
            changes(S::Shipped, S::Refunded),
            vec![],
            "the parcel is gone"
        );
        assert_eq!(changes(S::OutOfStock, S::Refunded), vec![]);
        assert_eq!(changes(S::AwaitingShipment, S::ShipmentCreated), vec![]);
    }

    fn non_set_change() -> impl Strategy<Value = StockChange> {
        change().prop_filter("Set is decided on the expected level", |c| {
            !matches!(c, StockChange::Set(_))
        })
    }

    #[test]
    fn pending_holds_count_against_what_is_available_and_pending_returns_do_not() {
        let committed = StockLevel {
            on_hand: 10,
            reserved: 2,
        };
        let hold = StockDelta {
            on_hand: 0,
            reserved: 3,
        };
        let sale_of_held = StockDelta {
            on_hand: -2,
            reserved: -2,
        };
        let restock = StockDelta {
            on_hand: 5,
            reserved: 0,
        };
        let level = deciding_level(committed, [hold, sale_of_held, restock]);
        assert_eq!(
            level.available(),
            5,
            "8 committed less the pending hold of 3"
        );
        assert_eq!(level.reserved, 0, "2 committed less the pending sale of 2");
        assert_eq!(
            expected_level(committed, [hold, sale_of_held, restock]),
            StockLevel {
                on_hand: 13,
                reserved: 3
            }
        );
    }

    proptest! {
        /// Changes decided against the deciding level while others are still
        /// pending: whichever of them commit, in whatever order, no level is
        /// ever invalid (no oversell, no negative hold).
        #[test]
        fn decisions_on_pending_levels_hold_whichever_commit(
            start in 0i64..20,
            decisions in proptest::collection::vec(
                (proptest::collection::vec(non_set_change(), 1..4), any::<bool>(), 0usize..8),
                0..60,
            ),
        ) {
            let mut committed = StockLevel { on_hand: start, reserved: 0 };
            // Decided transactions not yet settled: their summed delta each.
            let mut pending: Vec<StockDelta> = Vec::new();
            for (changes, commits, settle_index) in decisions {
                let level = deciding_level(committed, pending.iter().copied());
                let mut own = StockDelta::default();
                let mut refused = false;
                for change in changes {
                    match apply(level.plus(own), change) {
                        Ok((_, delta)) => own = own.plus(delta),
                        Err(_) => { refused = true; break; }
                    }
                }
                if !refused {
                    pending.push(own);
                }
                // Now and then settle one pending transaction, chosen at
                // random: committed or not. Others stay pending meanwhile.
                if !pending.is_empty() && settle_index % 2 == 0 {
                    let settled = pending.remove(settle_index % pending.len());
                    if commits {
                        committed = committed.plus(settled);
                    }
                }
                prop_assert!(committed.available() >= 0, "{committed:?}");
                prop_assert!(committed.reserved >= 0, "{committed:?}");
                // And the worst case of what is still pending is valid too.
                let worst = deciding_level(committed, pending.iter().copied());
                prop_assert!(worst.available() >= 0 && worst.reserved >= 0, "{worst:?}");
            }
        }

        /// Whatever operators and checkouts do, available never goes negative and
        /// the levels always equal the sums of their ledger deltas.
        #[test]
        fn levels_stay_valid_and_equal_their_ledger(changes in proptest::collection::vec(change(), 0..200)) {
            let mut level = StockLevel::default();
            let mut ledger = StockDelta::default();
            for change in changes {
                if let Ok((next, delta)) = apply(level, change) {
                    level = next;
                    ledger.on_hand += delta.on_hand;
                    ledger.reserved += delta.reserved;
                }
                prop_assert!(level.available() >= 0);
                prop_assert!(level.reserved >= 0);
                prop_assert_eq!(level.on_hand, ledger.on_hand);
                prop_assert_eq!(level.reserved, ledger.reserved);
            }
        }
    }
}
