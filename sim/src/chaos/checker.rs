//! Linearizability of a register history: the Wing–Gong search with the memoization of Lowe
//! and Porcupine (skip a configuration — operations linearized so far plus the register's value
//! — already shown to be a dead end). Linearizability is compositional, so callers check each
//! key (KV key, domain owner) on its own and histories stay small.
//!
//! Operations whose outcome is unknown (timeouts, lost connections) may have taken effect at
//! any point after they were invoked, or never: their return is at infinity and the search may
//! leave them out. Reads with unknown outcomes say nothing and are dropped.

use std::collections::HashSet;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// Set the value.
    Put(String),
    /// Read the value.
    Get,
    /// Set `new` if the value is `expected`.
    Cas {
        /// Value compared.
        expected: String,
        /// Value written on a match.
        new: String,
    },
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Output {
    /// The put was acknowledged.
    Put,
    /// The read returned this value (`None`: no value).
    Get(Option<String>),
    /// The compare-and-set answered whether it matched.
    Cas(bool),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation on one register, with invoke and return times (any monotonic unit).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    /// Client that issued it (for reports).
    pub client: usize,
    /// Invoke time.
    pub call: u64,
    /// Return time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// Request.
    pub input: Input,
    /// Response.
    pub output: Output,
}

/// Applies `op` to the register `state` if its response is possible there.
fn step(state: &Option<String>, op: &Operation) -> Option<Option<String>> {
    match (&op.input, &op.output) {
        (Input::Put(v), Output::Put | Output::Unknown) => Some(Some(v.clone())),
        (Input::Get, Output::Get(seen)) => (seen == state).then(|| state.clone()),
        (Input::Cas { expected, new }, Output::Cas(true)) => {
            (state.as_deref() == Some(expected.as_str())).then(|| Some(new.clone()))
        }
        (Input::Cas { expected, .. }, Output::Cas(false)) => {
            (state.as_deref() != Some(expected.as_str())).then(|| state.clone())
        }
        // An unanswered compare-and-set did whatever the value at its linearization point
        // made it do.
        (Input::Cas { expected, new }, Output::Unknown) => {
            if state.as_deref() == Some(expected.as_str()) {
                Some(Some(new.clone()))
            } else {
                Some(state.clone())
            }
        }
        _ => None,
    }
}

/// Result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists; the longest prefix found linearized this many operations of `total`.
    Violation {
        /// Operations the deepest partial linearization reached.
        linearized: usize,
        /// Operations that had to be linearized.
        total: usize,
    },
    /// The search gave up after this many steps (reported, never counted as a pass).
    GaveUp(u64),
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Checks that `history` (one register, starting empty unless `initial`) is linearizable.
/// `budget` bounds the search steps.
pub fn check(history: &[Operation], initial: Option<String>, budget: u64) -> Verdict {
    // Unknown reads constrain nothing.
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| !(o.input == Input::Get && o.output == Output::Unknown))
        .collect();
    let definite = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut events: Vec<Event> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push(Event {
            op: i,
            is_call: true,
            time: op.call,
        });
        events.push(Event {
            op: i,
            is_call: false,
            time: op.ret.unwrap_or(u64::MAX),
        });
    }
    // Calls before returns at equal times: touching operations count as concurrent.
    events.sort_by_key(|e| (e.time, !e.is_call, e.op));
    // A doubly linked list over the events, so linearized operations can be lifted out and
    // put back in O(1).
    let n = events.len();
    let (head, end) = (n, n + 1); // sentinel and end marker
    let mut next = vec![end; n + 1];
    let mut prev = vec![head; n];
    next[head] = if n == 0 { end } else { 0 };
    for i in 0..n {
        next[i] = if i + 1 < n { i + 1 } else { end };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    let mut return_of = vec![0usize; ops.len()];
    for (index, e) in events.iter().enumerate() {
        if !e.is_call {
            return_of[e.op] = index;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, x) = (prev[i], next[i]);
        next[p] = x;
        if x != end {
            prev[x] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, x) = (prev[i], next[i]);
        next[p] = i;
        if x != end {
            prev[x] = i;
        }
    };
    let words = ops.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut done_definite = 0usize;
    let mut deepest = 0usize;
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new(); // (call event, state before)
    let mut state = initial;
    let mut cursor = next[head];
    let mut steps = 0u64;
    loop {
        if done_definite == definite {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::GaveUp(steps);
        }
        // A definite return reached before its call could be linearized (or, defensively, the
        // end of the list) means the last choice was wrong: undo it and try the next candidate.
        if cursor != end && events[cursor].is_call {
            let op = events[cursor].op;
            if let Some(after) = step(&state, ops[op]) {
                let mut marked = linearized.clone();
                marked[op / 64] |= 1 << (op % 64);
                if cache.insert((marked.clone(), after.clone())) {
                    stack.push((cursor, state.clone()));
                    state = after;
                    linearized = marked;
                    if ops[op].ret.is_some() {
                        done_definite += 1;
                        deepest = deepest.max(done_definite);
                    }
                    lift(&mut next, &mut prev, cursor);
                    lift(&mut next, &mut prev, return_of[op]);
                    cursor = next[head];
                    continue;
                }
            }
            cursor = next[cursor];
            continue;
        }
        let Some((call, before)) = stack.pop() else {
            return Verdict::Violation {
                linearized: deepest,
                total: definite,
            };
        };
        let op = events[call].op;
        state = before;
        linearized[op / 64] &= !(1 << (op % 64));
        if ops[op].ret.is_some() {
            done_definite -= 1;
        }
        unlift(&mut next, &mut prev, return_of[op]);
        unlift(&mut next, &mut prev, call);
        cursor = next[call];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, input: Input, output: Output) -> Operation {
        Operation {
            client: 0,
            call,
            ret,
            input,
            output,
        }
    }
    fn put(v: &str) -> Input {
        Input::Put(v.into())
    }
    fn got(v: Option<&str>) -> Output {
        Output::Get(v.map(str::to_string))
    }
    const BUDGET: u64 = 1_000_000;

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = vec![
            op(0, Some(1), put("a"), Output::Put),
            op(2, Some(3), Input::Get, got(Some("a"))),
            op(4, Some(10), put("b"), Output::Put),
            // Concurrent with the put of b: either value is fine.
            op(5, Some(6), Input::Get, got(Some("a"))),
            op(7, Some(8), Input::Get, got(Some("b"))),
            op(
                11,
                Some(12),
                Input::Cas {
                    expected: "b".into(),
                    new: "c".into(),
                },
                Output::Cas(true),
            ),
            op(
                13,
                Some(14),
                Input::Cas {
                    expected: "b".into(),
                    new: "d".into(),
                },
                Output::Cas(false),
            ),
            op(15, Some(16), Input::Get, got(Some("c"))),
        ];
        assert_eq!(check(&h, None, BUDGET), Verdict::Linearizable);
        assert_eq!(check(&[], None, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let h = vec![
            op(0, Some(1), put("a"), Output::Put),
            op(2, Some(3), put("b"), Output::Put),
            op(4, Some(5), Input::Get, got(Some("a"))),
        ];
        assert!(matches!(
            check(&h, None, BUDGET),
            Verdict::Violation { total: 3, .. }
        ));
        // A lost acknowledged write: the final read sees the initial value.
        let lost = vec![
            op(0, Some(1), put("a"), Output::Put),
            op(2, Some(3), Input::Get, got(None)),
        ];
        assert!(matches!(
            check(&lost, None, BUDGET),
            Verdict::Violation { .. }
        ));
        // A value nobody wrote.
        let invented = vec![op(0, Some(1), Input::Get, got(Some("z")))];
        assert!(matches!(
            check(&invented, None, BUDGET),
            Verdict::Violation { .. }
        ));
        // A compare-and-set that succeeded although the value did not match.
        let bad_cas = vec![
            op(0, Some(1), put("a"), Output::Put),
            op(
                2,
                Some(3),
                Input::Cas {
                    expected: "x".into(),
                    new: "y".into(),
                },
                Output::Cas(true),
            ),
        ];
        assert!(matches!(
            check(&bad_cas, None, BUDGET),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        // A timed-out put seen much later: fine (it took effect late).
        let late = vec![
            op(0, None, put("a"), Output::Unknown),
            op(10, Some(11), Input::Get, got(None)),
            op(20, Some(21), Input::Get, got(Some("a"))),
        ];
        assert_eq!(check(&late, None, BUDGET), Verdict::Linearizable);
        // Never applied: fine too.
        let never = vec![
            op(0, None, put("a"), Output::Unknown),
            op(10, Some(11), Input::Get, got(None)),
        ];
        assert_eq!(check(&never, None, BUDGET), Verdict::Linearizable);
        // But it cannot apply before it was invoked.
        let early = vec![
            op(0, Some(1), Input::Get, got(Some("a"))),
            op(5, None, put("a"), Output::Unknown),
        ];
        assert!(matches!(
            check(&early, None, BUDGET),
            Verdict::Violation { .. }
        ));
        // Nor flip back and forth: a then b then a again needs two writes of a.
        let flip = vec![
            op(0, None, put("a"), Output::Unknown),
            op(1, Some(2), put("b"), Output::Put),
            op(3, Some(4), Input::Get, got(Some("a"))),
            op(5, Some(6), Input::Get, got(Some("b"))),
        ];
        assert!(matches!(
            check(&flip, None, BUDGET),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn many_concurrent_clients_stay_cheap() {
        // 8 clients, 400 overlapping operations on one register, generated from a legal
        // sequential run: must pass within the budget.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        for i in 0..400u64 {
            let (input, output) = match i % 3 {
                0 => {
                    value = Some(format!("v{i}"));
                    (put(&format!("v{i}")), Output::Put)
                }
                _ => (Input::Get, Output::Get(value.clone())),
            };
            // Each operation spans its own slot plus the next three: heavy overlap.
            h.push(op(i * 10, Some(i * 10 + 35), input, output));
        }
        assert_eq!(check(&h, None, BUDGET), Verdict::Linearizable);
    }
}
