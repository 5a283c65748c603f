//! What the simulator has been asked and what it answered: a pipeline test reads these to
//! show nobody was verified more often than retries explain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::RegistryResult;

/// Requests to `POST /registry/v1/verify` since the start (or the last reset), by outcome and
/// by national id.
///
/// Once no request is in flight, `total` is the sum of every outcome: `answered` (all four),
/// `faults`, `bare_errors`, `rate_limited`, `outage`, `hostile`, `bad_request` and
/// `abandoned`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every request received.
    pub total: u64,
    /// Definite answers (HTTP 200 with a valid `Result`), by result.
    pub answered: Answered,
    /// `500` with a `soap:Server` fault.
    pub faults: u64,
    /// `500` with a bare text body.
    pub bare_errors: u64,
    /// `429` (rate limit).
    pub rate_limited: u64,
    /// `503` (outage).
    pub outage: u64,
    /// Hostile answers (HTTP 200, not a definite answer).
    pub hostile: u64,
    /// Requests refused as malformed (`400`, or `413` for a body over 64 KiB).
    pub bad_request: u64,
    /// Requests whose client went away before the answer (during the simulated latency).
    pub abandoned: u64,
    /// Per national id, for every request that parsed.
    pub by_national_id: BTreeMap<String, IdCounts>,
}

/// Definite answers by result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    /// `MATCH` answers.
    #[serde(rename = "match")]
    pub matched: u64,
    /// `DATA_MISMATCH` answers.
    pub data_mismatch: u64,
    /// `DECEASED` answers.
    pub deceased: u64,
    /// `NOT_FOUND` answers.
    pub not_found: u64,
}

impl Answered {
    /// How many answers gave `result`.
    pub fn get(&self, result: RegistryResult) -> u64 {
        match result {
            RegistryResult::Match => self.matched,
            RegistryResult::DataMismatch => self.data_mismatch,
            RegistryResult::Deceased => self.deceased,
            RegistryResult::NotFound => self.not_found,
        }
    }

    /// Definite answers of any result.
    pub fn total(&self) -> u64 {
        self.matched + self.data_mismatch + self.deceased + self.not_found
    }

    pub(crate) fn add(&mut self, result: RegistryResult) {
        let slot = match result {
            RegistryResult::Match => &mut self.matched,
            RegistryResult::DataMismatch => &mut self.data_mismatch,
            RegistryResult::Deceased => &mut self.deceased,
            RegistryResult::NotFound => &mut self.not_found,
        };
        *slot += 1;
    }
}

/// What one national id got (`GET /_sim/counts/{national_id}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounts {
    /// Requests about this id that parsed, whatever their answer.
    pub requests: u64,
    /// Definite answers given about it (HTTP 200 with a valid `Result`).
    pub answers: u64,
}

impl Counts {
    /// The counts of one national id (zeros for an id never asked about).
    pub fn for_id(&self, national_id: &str) -> IdCounts {
        self.by_national_id
            .get(national_id)
            .copied()
            .unwrap_or_default()
    }

    /// The sum of every outcome; equals `total` once no request is in flight.
    pub fn outcomes(&self) -> u64 {
        self.answered.total()
            + self.faults
            + self.bare_errors
            + self.rate_limited
            + self.outage
            + self.hostile
            + self.bad_request
            + self.abandoned
    }
}
