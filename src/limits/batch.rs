//! Natural batching of Redis checks: the pure part. A request's check is a
//! [`Job`]; jobs wait in a bounded queue while a script call is in flight,
//! and the next call carries every waiting job (up to [`MAX_BATCH`]) in
//! one `EVALSHA`, one call per hash slot. The script checks and counts the
//! jobs one after the other, so a batch decides exactly as the same
//! requests sent one by one would, in queue order. When nothing is in
//! flight the first job goes at once: batching adds no delay when idle.
//! The I/O (queue, dispatcher, calls) lives in [`super::redis`].

use arrayvec::ArrayVec;
use tokio::sync::oneshot;

use super::{BackendError, MAX_TIERS};

/// Most requests in one script call: bounds the script's run time (Redis
/// is single-threaded; one call blocks it for all clients) and the reply.
pub const MAX_BATCH: usize = 128;
/// Most checks waiting for a call. A full queue (Redis hangs, or cannot
/// keep up) fails the request at once as a backend error
/// (`on_backend_error` decides it) rather than growing memory.
pub const MAX_QUEUED: usize = 8192;

/// Script modes (the first argument of each request in the script).
pub const MODE_PEEK: i64 = 0;
pub const MODE_COUNT: i64 = 1;
pub const MODE_RECORD: i64 = 2;
/// Take back one count from each tier, if still in the window it went into.
pub const MODE_REFUND: i64 = 3;

/// One reply: `[admitted, now_ms, c1, p1, at1, c2, …]`.
pub type Reply = Result<Vec<i64>, BackendError>;

/// One request's tiers of one hash slot, waiting for a script call.
#[derive(Debug)]
pub struct Job {
    /// The tiers' counter keys.
    pub keys: ArrayVec<String, MAX_TIERS>,
    /// `mode, n, (limit, window ms) × n`.
    pub args: ArrayVec<i64, { 2 + 2 * MAX_TIERS }>,
    /// The hash slot of every key (0 outside a cluster).
    pub slot: u16,
    /// Where the answer goes; `None` when nobody waits for it (a refund).
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl Job {
    /// Whether the request stopped waiting (timed out): such a job is
    /// dropped before it is sent, so it is not counted.
    pub fn abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.is_closed())
    }

    pub fn tiers(&self) -> usize {
        self.keys.len()
    }

    pub fn answer(self, reply: Reply) {
        if let Some(tx) = self.reply {
            let _ = tx.send(reply);
        }
    }
}

/// Splits `jobs` (in queue order) into one group per hash slot, each
/// group keeping queue order: a script call may only touch one slot.
pub fn group_by_slot(mut jobs: Vec<Job>) -> Vec<Vec<Job>> {
    // Stable: jobs of one slot stay in queue order.
    jobs.sort_by_key(|j| j.slot);
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        match groups.last_mut() {
            Some(g) if g[0].slot == job.slot => g.push(job),
            _ => groups.push(vec![job]),
        }
    }
    groups
}

/// The keys and arguments of one script call carrying `jobs`.
pub fn call_args(jobs: &[Job]) -> (Vec<String>, Vec<i64>) {
    let keys = jobs.iter().flat_map(|j| j.keys.iter().cloned()).collect();
    let mut args = Vec::with_capacity(1 + jobs.iter().map(|j| j.args.len()).sum::<usize>());
    args.push(jobs.len() as i64);
    for j in jobs {
        args.extend_from_slice(&j.args);
    }
    (keys, args)
}

/// Cuts the script's reply `{now, (admitted, c, p, at × n) × jobs}` into
/// one `[admitted, now, c, p, at, …]` per job.
pub fn split_reply(jobs: &[Job], out: &[i64]) -> Result<Vec<Vec<i64>>, BackendError> {
    let expected = 1 + jobs.iter().map(|j| 1 + 3 * j.tiers()).sum::<usize>();
    if out.len() != expected {
        return Err(BackendError::Redis(format!(
            "unexpected script reply of {} values for {} requests",
            out.len(),
            jobs.len()
        )));
    }
    let now = out[0];
    let mut at = 1;
    let mut replies = Vec::with_capacity(jobs.len());
    for j in jobs {
        let len = 1 + 3 * j.tiers();
        let mut r = Vec::with_capacity(len + 1);
        r.push(out[at]);
        r.push(now);
        r.extend_from_slice(&out[at + 1..at + len]);
        replies.push(r);
        at += len;
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(slot: u16, n: usize, mark: i64) -> Job {
        let mut keys = ArrayVec::new();
        let mut args = ArrayVec::new();
        args.push(MODE_COUNT);
        args.push(n as i64);
        for i in 0..n {
            keys.push(format!("k{mark}:{i}"));
            args.push(mark);
            args.push(60_000);
        }
        Job {
            keys,
            args,
            slot,
            reply: None,
        }
    }

    #[test]
    fn groups_keep_queue_order_within_a_slot() {
        let jobs = vec![job(5, 1, 1), job(2, 1, 2), job(5, 1, 3), job(2, 1, 4)];
        let groups = group_by_slot(jobs);
        let marks: Vec<Vec<i64>> = groups
            .iter()
            .map(|g| g.iter().map(|j| j.args[2]).collect())
            .collect();
        assert_eq!(marks, vec![vec![2, 4], vec![1, 3]]);
    }

    #[test]
    fn call_args_and_replies_line_up_per_job() {
        let jobs = vec![job(0, 2, 7), job(0, 1, 9)];
        let (keys, args) = call_args(&jobs);
        assert_eq!(keys, ["k7:0", "k7:1", "k9:0"]);
        assert_eq!(args, [2, 1, 2, 7, 60_000, 7, 60_000, 1, 1, 9, 60_000]);
        let out = [1000, 1, 3, 0, 1000, 4, 0, 1000, 0, 9, 2, 1000];
        let replies = split_reply(&jobs, &out).unwrap();
        assert_eq!(replies[0], [1, 1000, 3, 0, 1000, 4, 0, 1000]);
        assert_eq!(replies[1], [0, 1000, 9, 2, 1000]);
        assert!(split_reply(&jobs, &out[..5]).is_err());
    }
}
