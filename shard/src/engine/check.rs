//! Consistency checks of the engine's model: that every index agrees with the machines and
//! needs it was built from, and that a decision left nothing undone (no unreported shortfall, no
//! idle machine that would fit a short need). The tests call these after decisions; they read
//! the model and never change it.

use super::model::Engine;

impl Engine {
    /// Checks that every index agrees with the machines and needs (tests and debugging).
    pub fn check(&self) -> Result<(), String> {
        let mut assigned = 0;
        for (m, slot) in self.machines.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let m = m as u32;
            let idle = self.idle.contains(slot.domain, slot.resources, &m);
            if let Some(n) = slot.holder {
                assigned += 1;
                if slot.claim.is_some() || idle || self.orphans.contains(&m) {
                    return Err(format!("machine {}: held and also elsewhere", slot.id));
                }
                if !self.need(n).held.contains(&m) || !self.fits(m, n) {
                    return Err(format!("machine {}: holder does not hold it", slot.id));
                }
                let key = (self.need(n).need.priority, m);
                if !self.victims.contains(slot.domain, slot.resources, &key) {
                    return Err(format!("machine {}: missing from victims", slot.id));
                }
            } else {
                let orphan = self.orphans.contains(&m);
                let idle = idle || self.surplus.contains(&m);
                if orphan != slot.claim.is_some() || orphan == idle {
                    return Err(format!("machine {}: neither idle nor claimed", slot.id));
                }
                if orphan {
                    assigned += 1;
                }
            }
        }
        if !self.idle.consistent() || !self.victims.consistent() {
            return Err("per-domain, per-AZ and shard-wide indexes disagree".into());
        }
        if assigned != self.assigned {
            return Err(format!(
                "assigned count {} but {assigned} machines assigned",
                self.assigned
            ));
        }
        for (n, need) in self.needs.iter().enumerate() {
            let Some(need) = need else { continue };
            let n = n as u32;
            if need.held.iter().any(|m| self.slot(*m).holder != Some(n)) {
                return Err(format!(
                    "need {} lists a machine it does not hold",
                    need.need.id
                ));
            }
            let in_flight = self.in_flight_by_need.get(&need.need.id).copied();
            if need.held.len() as u32 + in_flight.unwrap_or(0) > need.need.count
                && !need.held.is_empty()
                && !self.dirty.contains(&n)
            {
                return Err(format!("need {} holds more than it asks", need.need.id));
            }
        }
        Ok(())
    }

    /// Every need served (held plus in flight) below its count, with what it lacks, by id
    /// (tests: after a decision these are exactly the plan's shortfalls).
    pub fn unserved(&self) -> Vec<(String, u32)> {
        let mut unserved: Vec<(String, u32)> = (0..self.needs.len() as u32)
            .filter(|n| self.needs[*n as usize].is_some())
            .filter_map(|n| {
                let missing = self.need(n).need.count.checked_sub(self.served(n))?;
                (missing > 0).then(|| (self.need(n).need.id.clone(), missing))
            })
            .collect();
        unserved.sort();
        unserved
    }

    /// Whether an idle machine in the shard's domains would fit a need that is short — after a
    /// decision this must be false for every short need (tests).
    pub fn idle_fits_a_short_need(&self) -> Option<String> {
        for n in &self.short {
            let need = self.need(*n);
            for &d in self.candidates(need.at) {
                if self.idle.by_domain[d as usize]
                    .covering(&need.need.resources)
                    .next()
                    .is_some()
                {
                    return Some(need.need.id.clone());
                }
            }
        }
        None
    }
}
