//! Cooperative intra-operator parallelism: an inference thread with nothing to do lends its
//! core to another thread's inference.
//!
//! The service runs one inference thread per core, each on its own batch. At full load every
//! core is busy, and splitting one image across cores would only add synchronization. At low
//! load (one request at a time, a synchronous `/predict` on a quiet server) one core works and
//! the others sleep. An [`AssistTeam`] joins the inference threads so that the sleeping ones
//! can help:
//!
//! - the thread running a batch **leads** ([`AssistTeam::lead`]);
//! - the kernels it runs (1×1, depthwise and stem convolutions, max-pool, channel shuffles)
//!   split their work into runs of planes or channels ([`for_each_run`]) and publish them
//!   while a member is helping;
//! - an idle member **helps** ([`AssistTeam::help`]): it claims parts until no one leads or
//!   work of its own arrives.
//!
//! Parts are claimed from a shared counter, so a part that no helper takes is run by the leader
//! itself. With no idle member (full load), a kernel costs one atomic load more than before and
//! runs exactly as it did, on one thread. Outside a team (the CLI, [`crate::Classifier`] used
//! directly) everything runs on the calling thread.
//!
//! One job is shared at a time: with several leaders (more than two inference threads), a
//! leader that finds the slot taken runs its kernel alone. A leader whose last part is held by a
//! preempted helper spins briefly, then yields its core until the helper is done.
//!
//! ```
//! use std::sync::Arc;
//! use classifier_core::model::AssistTeam;
//!
//! let team = Arc::new(AssistTeam::new());
//! // Kernels called inside `lead` may hand parts of their work to members in `help`.
//! let answer = team.lead(|| 6 * 7);
//! assert_eq!(answer, 42);
//! ```

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Threads that lend one another their idle time (see the [module](self)).
#[derive(Debug, Default)]
pub struct AssistTeam {
    /// Members running a batch now.
    leaders: AtomicUsize,
    /// Members spinning in [`AssistTeam::help`].
    helpers: AtomicUsize,
    /// The published job, with the generation it was published under.
    slot: Mutex<Option<(u64, JobPtr)>>,
    /// The generation of the job in `slot`, 0 when there is none (helpers spin on this).
    published: AtomicU64,
    /// The last generation handed out.
    generations: AtomicU64,
    /// Parts run by helpers so far.
    helped: AtomicU64,
}

/// A thread started by [`AssistTeam::spawn_helper`]; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct HelperThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HelperThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            // A helper that panicked has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// Work split into `parts` independent calls of `run`.
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    /// The next part to claim.
    next: AtomicUsize,
    /// Helpers working on this job: its leader waits for 0 before the job (on its stack) goes.
    inside: AtomicUsize,
    /// A part panicked on a helper.
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claim and run parts until none is left; returns how many this call ran.
    fn work(&self) -> u64 {
        let mut ran = 0;
        loop {
            let part = self.next.fetch_add(1, Ordering::Relaxed);
            if part >= self.parts {
                return ran;
            }
            (self.run)(part);
            ran += 1;
        }
    }
}

/// A published job, with its lifetime erased. It is only dereferenced by a helper that
/// registered in `inside` while the job was published (under the slot's lock), and its leader
/// unpublishes it and waits for `inside` to drop to 0 before the job goes out of scope.
#[derive(Debug, Clone, Copy)]
struct JobPtr(*const Job<'static>);

// SAFETY: see `JobPtr`: the pointee is alive and `Sync` (its closure is `Sync`, the rest atomics)
// whenever another thread dereferences the pointer.
unsafe impl Send for JobPtr {}

thread_local! {
    /// The team whose batch this thread leads now.
    static LEADING: Cell<Option<*const AssistTeam>> = const { Cell::new(None) };
}

impl AssistTeam {
    /// A team with no members yet: threads join by calling [`lead`](Self::lead) and
    /// [`help`](Self::help).
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self) -> MutexGuard<'_, Option<(u64, JobPtr)>> {
        // Every critical section leaves the slot consistent: recover from poisoning.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` (an inference) as a leader: kernels it calls may share their parts with the
    /// members in [`help`](Self::help).
    pub fn lead<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        struct Leading<'t> {
            team: &'t AssistTeam,
            previous: Option<*const AssistTeam>,
        }
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                LEADING.with(|l| l.set(self.previous));
                self.team.leaders.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.leaders.fetch_add(1, Ordering::SeqCst);
        let previous = LEADING.with(|l| l.replace(Some(Arc::as_ptr(self))));
        let _leading = Leading {
            team: self,
            previous,
        };
        f()
    }

    /// Whether some member leads a batch now (an idle member should then [`help`](Self::help)).
    pub fn needs_help(&self) -> bool {
        self.leaders.load(Ordering::SeqCst) > 0
    }

    /// Parts of kernels that helpers ran so far (a measure of how much help was given).
    pub fn parts_helped(&self) -> u64 {
        self.helped.load(Ordering::Relaxed)
    }

    /// Members helping now.
    pub fn helping(&self) -> usize {
        self.helpers.load(Ordering::Relaxed)
    }

    /// Help the leaders until none is left or `stop` returns true (the helper has work of its
    /// own). Spins while it waits for parts, so call it only while some member leads.
    pub fn help(&self, stop: impl Fn() -> bool) {
        struct Helping<'t>(&'t AssistTeam);
        impl Drop for Helping<'_> {
            fn drop(&mut self) {
                self.0.helpers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.helpers.fetch_add(1, Ordering::SeqCst);
        let _helping = Helping(self);
        let mut done = 0u64;
        let mut idle_spins = 0u32;
        while self.leaders.load(Ordering::SeqCst) > 0 && !stop() {
            let generation = self.published.load(Ordering::Acquire);
            if generation == 0 || generation == done {
                idle_spins = idle_spins.wrapping_add(1);
                if idle_spins.is_multiple_of(1024) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let entered = {
                let slot = self.slot();
                match *slot {
                    Some((g, job)) => {
                        // SAFETY: the job is published (we hold the slot's lock), so its leader
                        // has not unpublished it and waits for `inside` to drop before it goes.
                        unsafe { &*job.0 }.inside.fetch_add(1, Ordering::AcqRel);
                        Some((g, job))
                    }
                    None => None,
                }
            };
            let Some((g, job)) = entered else { continue };
            done = g;
            // SAFETY: registered in `inside` above; the job lives until that count drops.
            let job = unsafe { &*job.0 };
            match catch_unwind(AssertUnwindSafe(|| job.work())) {
                Ok(ran) => {
                    self.helped.fetch_add(ran, Ordering::Relaxed);
                }
                Err(_) => job.panicked.store(true, Ordering::Release),
            }
            // Publishes this helper's writes to the leader (which loads `inside` with Acquire).
            // The job must not be touched after this.
            job.inside.fetch_sub(1, Ordering::Release);
            idle_spins = 0;
        }
    }

    /// Start a dedicated thread that helps whenever a member leads, until the returned handle
    /// is dropped (for benches and tests; the service's inference threads help by themselves
    /// when idle).
    pub fn spawn_helper(self: &Arc<Self>) -> HelperThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (team, flag) = (self.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if team.needs_help() {
                    team.help(|| flag.load(Ordering::SeqCst));
                } else {
                    std::thread::yield_now();
                }
            }
        });
        HelperThread {
            stop,
            handle: Some(handle),
        }
    }

    /// Run the parts of `run`, with whoever helps.
    fn share(&self, parts: usize, run: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            run,
            parts,
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut slot = self.slot();
            if slot.is_some() {
                // Another leader shares a job now: do this one alone.
                drop(slot);
                job.work();
                return;
            }
            let erased = (&job as *const Job<'_>).cast::<Job<'static>>();
            *slot = Some((generation, JobPtr(erased)));
            self.published.store(generation, Ordering::Release);
        }
        /// Unpublishes the job and waits for its helpers, also if a part panics here.
        struct Unpublish<'t, 'j> {
            team: &'t AssistTeam,
            job: &'j Job<'j>,
        }
        impl Drop for Unpublish<'_, '_> {
            fn drop(&mut self) {
                *self.team.slot() = None;
                self.team.published.store(0, Ordering::Release);
                let mut spins = 0u32;
                while self.job.inside.load(Ordering::Acquire) > 0 {
                    // A helper preempted in the middle of a part may wait on this very core:
                    // after a short spin, let it run.
                    spins = spins.saturating_add(1);
                    if spins > SPINS_BEFORE_YIELD {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let unpublish = Unpublish {
            team: self,
            job: &job,
        };
        job.work();
        drop(unpublish);
        if job.panicked.load(Ordering::Acquire) {
            panic!("a kernel part panicked on a helping thread");
        }
    }
}

/// Spins of a leader waiting for its helpers before it starts yielding its core to them.
const SPINS_BEFORE_YIELD: u32 = 1_000;

/// Parts per thread a kernel should split its work into when members help: more than one,
/// so that a helper that arrives late or is interrupted still gets a share.
const PARTS_PER_THREAD: usize = 2;

/// How many parts the calling kernel should split its work into: 1 when no member helps the
/// team this thread leads (so a kernel that needs scratch space per part allocates it once,
/// as before), more when some do.
pub(crate) fn parts_wanted() -> usize {
    match LEADING.with(Cell::get) {
        // SAFETY: as in `for_each_part`.
        Some(team) => match unsafe { &*team }.helping() {
            0 => 1,
            helpers => PARTS_PER_THREAD * (helpers + 1),
        },
        None => 1,
    }
}

/// Call `run(part)` for every part in `0..parts`, in any order, on this thread and on the
/// members of the team this thread leads that are helping now (if any).
pub(crate) fn for_each_part(parts: usize, run: &(dyn Fn(usize) + Sync)) {
    if parts > 1 {
        if let Some(team) = LEADING.with(Cell::get) {
            // SAFETY: `LEADING` is set only inside `AssistTeam::lead`, which holds an `Arc` of
            // the team for as long as it is set.
            let team = unsafe { &*team };
            if team.helping() > 0 {
                return team.share(parts, run);
            }
        }
    }
    (0..parts).for_each(run);
}

/// A raw pointer that may cross threads: each part of [`for_each_chunk_mut`] makes a
/// disjoint slice from it.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: used only to rebuild disjoint `&mut [T]` (one per part, each part run once), which
// is sound to send to other threads when `T: Send`.
unsafe impl<T: Send> Sync for SharedMut<T> {}
unsafe impl<T: Send> Send for SharedMut<T> {}

/// Call `run(index, chunk)` for every `chunk_len`-long chunk of `data` (the last may be
/// shorter), like `data.chunks_mut(chunk_len).enumerate()`, sharing the chunks with the
/// helping members of this thread's team (see [`for_each_part`]).
fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    run: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    let len = data.len();
    let parts = len.div_ceil(chunk_len);
    let base = SharedMut(data.as_mut_ptr());
    for_each_part(parts, &|part| {
        let start = part * chunk_len;
        let end = (start + chunk_len).min(len);
        let base = &base;
        // SAFETY: `start..end` lies inside `data` (part < parts), the parts' ranges are
        // disjoint, and each part runs exactly once while `data` is borrowed mutably by this
        // call, so this is the only reference to these elements.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        run(part, chunk);
    });
}

/// Call `run(first, units)` over runs of whole units of `data` (a unit is `unit_len` values:
/// a plane, or an output channel's plane), each run a multiple of `align` units except the
/// last, `first` being the index of its first unit. One run of everything when no member helps
/// (see [`parts_wanted`]), several shared with the helpers when some do.
pub(crate) fn for_each_run<T: Send>(
    data: &mut [T],
    unit_len: usize,
    align: usize,
    run: impl Fn(usize, &mut [T]) + Sync,
) {
    if unit_len == 0 {
        return;
    }
    let units_per_run = chunk_units(data.len() / unit_len, parts_wanted(), align);
    for_each_chunk_mut(data, units_per_run * unit_len, |part, chunk| {
        run(part * units_per_run, chunk)
    });
}

/// How long the chunks of `units` units should be (a multiple of `align` units) so that
/// there are about `parts` of them.
fn chunk_units(units: usize, parts: usize, align: usize) -> usize {
    let align = align.max(1);
    units.div_ceil(parts.max(1)).div_ceil(align).max(1) * align
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    fn wait_for_helper(team: &AssistTeam) {
        for _ in 0..10_000 {
            if team.helping() > 0 {
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        panic!("the helper never started helping");
    }

    #[test]
    fn every_part_runs_once_without_a_team() {
        let counts: Vec<AtomicU32> = (0..37).map(|_| AtomicU32::new(0)).collect();
        for_each_part(37, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn every_part_runs_once_and_the_helper_takes_some() {
        let team = Arc::new(AssistTeam::new());
        let helper = team.spawn_helper();
        let leader = std::thread::current().id();
        let mut helped = 0;
        team.lead(|| {
            wait_for_helper(&team);
            for _ in 0..200 {
                let counts: Vec<AtomicU32> = (0..16).map(|_| AtomicU32::new(0)).collect();
                let elsewhere = AtomicU32::new(0);
                for_each_part(16, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    if std::thread::current().id() != leader {
                        elsewhere.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(50));
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                helped += elsewhere.load(Ordering::Relaxed);
            }
        });
        drop(helper);
        assert!(helped > 0, "the helper never ran a part");
    }

    #[test]
    fn chunks_cover_the_slice_exactly_with_a_helper() {
        let team = Arc::new(AssistTeam::new());
        let helper = team.spawn_helper();
        team.lead(|| {
            wait_for_helper(&team);
            for len in [0usize, 1, 7, 64, 1000, 1001] {
                let mut data = vec![0u32; len];
                for_each_chunk_mut(&mut data, 13, |part, chunk| {
                    for (k, v) in chunk.iter_mut().enumerate() {
                        *v += (part * 13 + k) as u32 + 1;
                    }
                });
                let expected: Vec<u32> = (1..=len as u32).collect();
                assert_eq!(data, expected, "length {len}");
            }
        });
        drop(helper);
    }

    #[test]
    fn a_panicking_part_on_the_helper_reaches_the_leader() {
        let team = Arc::new(AssistTeam::new());
        let helper = team.spawn_helper();
        let leader = std::thread::current().id();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            team.lead(|| {
                wait_for_helper(&team);
                for _ in 0..1000 {
                    for_each_part(64, &|_| {
                        std::thread::sleep(Duration::from_micros(20));
                        if std::thread::current().id() != leader {
                            panic!("part failed on the helper");
                        }
                    });
                }
            })
        }));
        assert!(outcome.is_err(), "the helper's panic was lost");
        // The team is still usable: the leader's guard unpublished the job.
        assert_eq!(team.lead(|| 5), 5);
        assert!(!team.needs_help());
        drop(helper);
    }

    #[test]
    fn chunk_units_rounds_to_the_alignment() {
        assert_eq!(chunk_units(116, 4, 8), 32);
        assert_eq!(chunk_units(464, 4, 8), 120);
        assert_eq!(chunk_units(3, 4, 8), 8);
        assert_eq!(chunk_units(0, 4, 8), 8);
        assert_eq!(chunk_units(10, 0, 0), 10);
    }
}
