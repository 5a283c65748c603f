//! The workloads: who contends for which slot, in arrival order.

use chrono::NaiveDate;
use rand::{Rng as _, SeedableRng as _};
use streams::model::{Location, Region, SlotKey};

use super::Options;

/// One workload: the slots with their capacities, and each contender's slot (by index) in
/// the order they arrive.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `hot` or `spread`.
    pub name: &'static str,
    /// Slots and capacities.
    pub slots: Vec<(SlotKey, u32)>,
    /// Per contender, in arrival order, the index of the slot it wants.
    pub contenders: Vec<usize>,
}

impl Workload {
    /// Slots in all.
    pub fn capacity(&self) -> u32 {
        self.slots.iter().map(|(_, c)| c).sum()
    }
}

fn slot(workload: &str, n: u32) -> SlotKey {
    SlotKey {
        region: Region::parse("bench").expect("a valid region"),
        location: Location::parse(&format!("{workload}-{n:03}")).expect("a valid location"),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).expect("a valid date"),
    }
}

/// Every contender wants the same slot.
pub fn hot(options: &Options) -> Workload {
    Workload {
        name: "hot",
        slots: vec![(slot("hot", 0), options.capacity)],
        contenders: vec![0; options.contenders as usize],
    }
}

/// Contenders spread over many locations with a Zipf-like skew (location `i` is chosen with
/// weight `1 / (i + 1)`): a few hot, most cold. The capacity is shared evenly.
pub fn spread(options: &Options) -> Workload {
    let n = options.spread_locations.max(1);
    let each = options.capacity / n;
    let slots: Vec<(SlotKey, u32)> = (0..n)
        .map(|i| {
            let extra = u32::from(i < options.capacity % n);
            (slot("spread", i), each + extra)
        })
        .collect();
    let weights: Vec<f64> = (0..n).map(|i| 1.0 / f64::from(i + 1)).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let contenders = (0..options.contenders)
        .map(|_| {
            let mut pick = rng.random_range(0.0..total);
            weights
                .iter()
                .position(|w| {
                    pick -= w;
                    pick < 0.0
                })
                .unwrap_or(0)
        })
        .collect();
    Workload {
        name: "spread",
        slots,
        contenders,
    }
}
