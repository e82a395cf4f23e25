//! Incremental snapshots are exact: a full copy, then copies of what changed, each
//! published or given up at random, applied in order give the state each was taken from,
//! whatever the events (late ones and finalized days included) and wherever the copies fall.

use proptest::prelude::*;

use super::super::*;
use super::{core, delayed, events, D};

/// What a snapshot taken between two batches does.
#[derive(Debug, Clone, Copy)]
enum Copy {
    None,
    Full { published: bool },
    Changed { published: bool },
}

fn copy() -> impl Strategy<Value = Copy> {
    prop_oneof![
        2 => Just(Copy::None),
        1 => any::<bool>().prop_map(|published| Copy::Full { published }),
        3 => any::<bool>().prop_map(|published| Copy::Changed { published }),
    ]
}

proptest! {
    #[test]
    fn a_chain_of_changes_restores_the_state_each_copy_was_taken_from(
        events in events(),
        keys in prop::collection::vec(0i64..(3 * D), 300),
        batch in 1usize..40,
        copies in prop::collection::vec(copy(), 1..60),
        keep_customers in any::<bool>(),
    ) {
        let mut c = core();
        c.config.keep_day_customers = keep_customers;
        c.track_changes();
        // The state the published snapshots restore to, when one is published.
        let mut chain: Option<CoreState> = None;
        let shuffled = delayed(&events, &keys);
        let chunks: Vec<&[PurchaseEvent]> = shuffled.chunks(batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            c.record_batch(chunk);
            let last = i + 1 == chunks.len();
            if last {
                c.finish();
            }
            let what = if last { Copy::Changed { published: true } } else { copies[i % copies.len()] };
            match (what, &mut chain) {
                (Copy::None, _) => {}
                (Copy::Full { published }, _) | (Copy::Changed { published }, None) => {
                    let state = c.clone().state();
                    let mark = c.mark();
                    if published {
                        c.settle(mark);
                        chain = Some(state);
                    }
                }
                (Copy::Changed { published }, Some(restored)) => {
                    let (part, mark) = c.changed();
                    if published {
                        restored.apply_all(vec![part.state()]);
                        prop_assert_eq!(&*restored, &c.state());
                        c.settle(mark);
                    }
                }
            }
        }
    }
}

#[test]
fn nothing_changed_since_a_published_copy_is_an_empty_copy() {
    use crate::testing::ev;
    let mut c = core();
    c.track_changes();
    let t = super::JUNE1;
    c.record(&ev(t, 1, Some(7), 100, Some(0), Some(1)));
    c.record(&ev(t + D, 2, Some(8), 200, Some(0), None));
    let mark = c.mark();
    c.settle(mark);
    let (part, mark) = c.changed();
    assert!(part.customers.is_empty() && part.days.is_empty());
    assert_eq!(part.customer_orders.len(), 0);
    c.settle(mark);
    // One more event: its day and customer and pair only.
    c.record(&ev(t + D, 3, Some(7), 300, Some(0), None));
    let (part, _) = c.changed();
    assert_eq!(part.customers.keys().copied().collect::<Vec<_>>(), vec![7]);
    assert_eq!(
        part.days.keys().copied().collect::<Vec<_>>(),
        vec![crate::day_of(t + D)]
    );
    assert_eq!(
        part.customer_orders.iter().copied().collect::<Vec<_>>(),
        vec![(7, 3)]
    );
    assert_eq!(part.customers[&7].monetary_cents, 400);
    // Given up (not settled): the next copy holds it still, and what came after.
    c.record(&ev(t, 4, Some(9), 50, None, None));
    let (again, _) = c.changed();
    let mut ids: Vec<u64> = again.customers.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
    assert_eq!(again.days.len(), 2);
}
