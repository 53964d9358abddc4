/*
 * taskmw ring: a bounded multi-producer, multi-consumer queue of
 * variable-length records in one shared-memory region, with futex wake-ups
 * (and an eventfd for consumers that wait in an event loop).
 *
 * This header is the contract between the C core (ring.c) and its only
 * caller, the Python wrapper taskmw/ring.py (through cffi, which reads the
 * declarations below from this file). Functions never abort and never print.
 * Lengths, positions and sequence numbers read from shared memory are
 * checked against the geometry each handle keeps in private memory: a
 * corrupt region gives TMW_ECORRUPT, not a crash.
 *
 * PROCESSES. A region made by tmw_ring_create() is inherited across fork():
 * the child gets a copy of the handle, already usable, and any number of
 * processes may push and pop at once. Each process that uses the ring takes
 * one slot (tmw_ring_slot_claim). A slot is where a consumer's pop records
 * which records it took ("held"), in the same critical section that removes
 * them from the ring, so that if the consumer is killed at any instant a
 * supervisor can list exactly what it held (tmw_ring_reclaim). A record
 * stays held until the slot releases it. A process killed anywhere, even
 * inside the lock, leaves a usable ring: the next locker repairs it.
 *
 * THREADS. All threads of a process share its handle and its one slot, and
 * every call below may run in several threads at once, on the same slot,
 * except tmw_ring_close (no other call on the handle may be running, or
 * sleeping, when it starts) and tmw_ring_slot_claim (once per process:
 * a second claim takes a second slot; ring.py claims under a lock). This is
 * why it is safe:
 *   - the ring (positions, sequence numbers, record bytes) and every slot's
 *     held list change only under one robust, process-shared mutex, taken
 *     per call and never held across a wait;
 *   - outside the mutex, only atomic loads and read-modify-writes touch
 *     shared words: the ring's "empty/has room" checks, pop's held-count
 *     pre-check, the waiter counts, wake-up flags and counters, a free
 *     slot's claim (compare-and-swap of its owner), and each slot's sleeper
 *     and arm counts (so several threads of one slot may sleep at once, in
 *     pop and in push);
 *   - the handle itself is read-only after creation.
 * What the caller must keep per thread: a tmw_pop_buf and the buffers it
 * points to belong to one call at a time (ring.py keeps one per thread).
 * What is per slot, not per thread: held records (any thread may release
 * any of them, and "release all" releases those other threads' pops hold
 * too; the max_held limit counts them all) and arms (one thread's disarm
 * may match another thread's arm).
 *
 * FILE DESCRIPTORS. tmw_ring_create() opens two, both close-on-exec, both
 * owned by the handle: the memfd of the region and the "data" eventfd
 * (written when records arrive and a consumer is armed, see tmw_ring_arm).
 * fork() gives the child its own copies of both (same numbers), the handle
 * and the shared mapping; exec() closes them. Only tmw_ring_close() closes them,
 * and only this process's copies: the region lives on while any process
 * maps it or has its memfd open. The caller may poll the fds that the
 * getters return, and dup() them, but must not close them, and must not
 * read the data eventfd (that takes a wake-up meant for an armed consumer:
 * only tmw_ring_disarm reads it).
 *
 * WAKE-UPS. Consumers asleep in pop, and producers asleep in push, sleep on
 * a futex word of their side in the shared header (in every process and
 * thread); a wake-up wakes exactly one sleeper of that side (FUTEX_WAKE of
 * 1), so one record wakes one idle consumer and the others sleep on. A pop
 * that leaves records behind wakes another sleeping consumer, and a push
 * that leaves room (for at least a record of 0 bytes) another sleeping
 * producer: when one call makes room (or brings records) for several
 * sleepers, each that gets through wakes the next, and none waits out its
 * slice. A sleeper that was woken and then found nothing to do goes back to
 * sleep and passes nothing on (so sleepers that cannot proceed never wake
 * each other in a loop; but if the one woken is a producer whose record
 * needs more room than there is, smaller ones that would fit wait for the
 * next wake-up or slice). While one wake-up is on its way (its sleeper has
 * not run yet), further records make no wake call. No call wakes anybody
 * when nobody sleeps, so a busy ring makes no system call per record.
 * Consumers armed for an event loop (tmw_ring_arm) are woken apart, through
 * the data eventfd: every record that finds one armed writes it (once until
 * a disarm drains it). LINGER: a consumer may ask pop to linger first
 * (tmw_pop_buf.linger_ns): when the ring is empty it sleeps up to that long
 * as the ring's one lingerer (at most one consumer lingers at a time; the
 * others sleep as above). A push made with TMW_WAKE_SOON wakes nobody while
 * a consumer lingers: the lingerer finds the record when its linger ends
 * (so at web rates one timed wake-up takes several records, and producers
 * make no system call); every other wake-up of the consumers' side wakes a
 * lingerer too. A linger is one sleep (not cut in slices: a consumer that
 * is killed lingering leaves the ring believing it lingers until
 * tmw_ring_reclaim, and meanwhile records wait for the other sleepers'
 * slices). Waits sleep in slices of at most 100 ms and re-check
 * the ring after each, so a wake-up that went astray (a sleeper killed
 * mid-wake, or a lazy push nobody followed with tmw_ring_wake) delays a
 * waiter inside tmw_ring_push/pop by at most one slice; an event loop
 * waiting after tmw_ring_arm has no slices. A process killed while asleep
 * is out of the kernel's futex queue at once: wake-ups go to live sleepers.
 *
 * TIMEOUTS (push, pop): seconds; < 0 waits forever, 0 never waits (the call
 * returns TMW_EAGAIN instead of waiting), > 0 at most that long (capped at
 * 1e9 s; TMW_ETIMEDOUT when it passes). A waiter first polls the ring for
 * spin_ns, then sleeps.
 *
 * ERRORS: functions return 0 (TMW_OK) or a negative TMW_E* code; each
 * function below lists the codes it can return. Two apply to all that say so:
 * TMW_ECORRUPT "locking" means the mutex could not be taken (its memory was
 * overwritten, or it is unrecoverable), and TMW_ENOSLOT "slot" means the slot
 * index is out of range (a slot index must be one the calling process
 * claimed; the index is range-checked, not its owner).
 */
#ifndef TASKMW_RING_H
#define TASKMW_RING_H

#include <stddef.h>
#include <stdint.h>

/* Return codes (taskmw/ring.py keeps a message for each in _ERRORS). */
#define TMW_OK 0
#define TMW_EAGAIN (-1)     /* ring empty (pop) or full (push), and timeout 0 */
#define TMW_ETIMEDOUT (-2)  /* waited the whole timeout */
#define TMW_EINTR (-3)      /* a signal interrupted a sleep: call again with what is left of the timeout */
#define TMW_ETOOBIG (-4)    /* record larger than tmw_ring_max_record() */
#define TMW_EBUFSMALL (-5)  /* pop: first record does not fit the out buffer */
#define TMW_ECORRUPT (-6)   /* shared memory failed a consistency check, or the lock could not be taken */
#define TMW_EHELDFULL (-7)  /* pop with hold: the slot already holds max_held records */
#define TMW_ENOSLOT (-8)    /* no free slot, or slot index out of range */
#define TMW_EINVAL (-9)     /* bad argument; disarm without a matching arm */
#define TMW_ESYS (-10)      /* a system call failed: see errno */

/* A snapshot of the ring (tmw_ring_get_stats). The fields are read one by
 * one without the lock, so they need not agree with each other exactly
 * (e.g. records and used_bytes may be from instants a push apart).
 * Constant for the ring's life: capacity, max_record, nslots, max_held.
 * Current values, going up and down: used_bytes, records.
 * Monotonic (never decrease; 64-bit, never wrap in practice): pushed,
 * popped, next_seq (always pushed + 1), wakeups, push_waits, pop_waits,
 * recoveries, woken. pushed and popped count committed pushes and pops only (a
 * process killed in the middle of one leaves them as if it had not started,
 * or as if it had finished). The last five are statistics kept with relaxed
 * atomics: a process killed between a wake call and its count leaves
 * wakeups one short. */
typedef struct {
    uint64_t capacity;      /* data bytes in the ring */
    uint64_t max_record;    /* largest record payload accepted */
    uint64_t used_bytes;    /* bytes occupied now, headers included */
    uint64_t records;       /* records in the ring now */
    uint64_t pushed;        /* records ever pushed */
    uint64_t popped;        /* records ever taken out of the ring (held or not) */
    uint64_t next_seq;      /* sequence number the next record will get */
    uint64_t wakeups;       /* wake calls made (futex wakes of either side, and eventfd writes) */
    uint64_t push_waits;    /* push calls that found no room and would wait (once per call) */
    uint64_t pop_waits;     /* pop calls that found the ring empty and would wait (once per call) */
    uint64_t recoveries;    /* times a locker took the lock over from a dead owner */
    uint64_t woken;         /* sleeps in push or pop ended by a wake-up (not a timeout, nor a signal) */
    uint32_t nslots;
    uint32_t max_held;
    uint32_t lingering;     /* 1 while a consumer lingers in pop (see LINGER), else 0 */
    uint32_t _pad;
} tmw_ring_stats;

/* One record a consumer holds: its sequence number and producer's aux word. */
typedef struct {
    uint64_t seq;
    uint32_t aux;
    uint32_t _pad;
} tmw_held;

typedef struct tmw_ring tmw_ring;

/* Create a ring in a new anonymous region (memfd; no file in any
 * directory). capacity: data bytes, 64 to 2^40, rounded up to a multiple
 * of 16. nslots: processes that may use the ring at once (>= 1). max_held:
 * records one slot may hold at once (>= 1). spin_ns: how long a waiter
 * polls before sleeping (0: sleep at once).
 * On success *out is a handle owning the mapping and the two fds (see
 * FILE DESCRIPTORS); it is freed, in this process only, by tmw_ring_close().
 * Errors: TMW_EINVAL (out is NULL, or a size out of range); TMW_ESYS
 * (memfd_create, ftruncate, mmap, eventfd, the mutex or malloc failed; errno
 * tells why; nothing is left open). */
int tmw_ring_create(uint64_t capacity, uint32_t nslots, uint32_t max_held,
                    uint64_t spin_ns, tmw_ring **out);

/* Open a ring another process made, from copies of its two fds (received
 * over a unix socket with SCM_RIGHTS): the memfd and the data eventfd.
 * The geometry is read from the region's header and checked against the
 * memfd's size. On success *out owns the two fds (tmw_ring_close closes
 * them); on error they are left open for the caller to close.
 * Errors: TMW_EINVAL (out is NULL, an fd < 0); TMW_ECORRUPT (not a ring,
 * or a header that does not match the region); TMW_ESYS (fstat, mmap or
 * malloc failed; errno tells why). */
int tmw_ring_open(int memfd, int efd_data, uint64_t spin_ns, tmw_ring **out);

/* Unmap the region and close this process's memfd and its eventfd, then
 * free the handle (r may be NULL). Other processes, and their copies of the
 * fds, are unaffected; so is the shared state: a slot this process claimed,
 * and what it holds, stay until the process dies (then tmw_ring_reclaim, or
 * a claim that finds no free slot, frees it). No other call on r may be
 * running, or start, in any thread: they would use freed memory. Remove the
 * data eventfd from any event loop first (its number may be reused). Keeps
 * errno. */
void tmw_ring_close(tmw_ring *r);

/* This handle's memfd of the region, and its data eventfd (readable when
 * records arrived for an armed consumer: for an event loop, with
 * tmw_ring_arm). Borrowed: valid until tmw_ring_close; see FILE DESCRIPTORS
 * for what the caller may do with them. No errors. */
int tmw_ring_memfd(const tmw_ring *r);
int tmw_ring_data_fd(const tmw_ring *r);

/* Largest payload one record may carry, in bytes (capacity - 32: a record's
 * header takes 32 bytes). */
uint64_t tmw_ring_max_record(const tmw_ring *r);

/* Byte offset of the data area inside the region (for tests that corrupt it
 * on purpose through the memfd). */
uint64_t tmw_ring_data_offset(const tmw_ring *r);

/* Claim a free slot for process pid; returns the slot index (>= 0). When
 * none is free, slots of dead processes that hold no records are freed and
 * reused (those that hold records wait for tmw_ring_reclaim, so nothing
 * they held is forgotten). Call it once per process (every call takes a new
 * slot, even for the same pid); a forked child claims its own, never uses
 * its parent's. Lock-free unless no slot is free.
 * Errors: TMW_EINVAL (pid <= 0); TMW_ENOSLOT (none free, none reusable);
 * TMW_ECORRUPT (locking). */
int tmw_ring_slot_claim(tmw_ring *r, int32_t pid);

/* How a push wakes consumers (tmw_ring_push's and tmw_ring_push_one's how). */
#define TMW_WAKE_NOW 0  /* wake a sleeping consumer (one asleep in pop, or lingering) at once */
#define TMW_WAKE_LAZY 1 /* wake nobody: the producer calls tmw_ring_wake later */
#define TMW_WAKE_SOON 2 /* as NOW, unless a consumer lingers: it takes the record when its linger ends */

/* Push n records. data holds their payloads back to back; lens[i] is the
 * length of record i. Every record carries the 32-bit aux word, and the
 * wall-clock time of the call (CLOCK_REALTIME ns, read once per call before
 * the lock; tmw_ring_pop's stamps and tmw_ring_peek give it). Records go
 * in whole and in order: *pushed is set to how many went in (a prefix, also
 * when an error is returned), and *first_seq to the sequence number of the
 * first one (0 if none). Sequence numbers are unique, never 0, and given in
 * push order across the ring; the records of one call are consecutive
 * except where the call had to wait for room (other producers' records may
 * then come in between). Waits for room as the timeout says; a prefix that
 * fits goes in before waiting. Wakes a consumer as how says (TMW_WAKE_*),
 * and, when it leaves room, another sleeping producer (see WAKE-UPS).
 * TMW_WAKE_LAZY is for a producer that batches wake-ups (several pushes,
 * then one tmw_ring_wake within the delay it promises its consumer; a
 * consumer asleep in pop still finds the records at the end of its slice
 * at the latest); TMW_WAKE_SOON for one that accepts a lingering
 * consumer's delay (see WAKE-UPS, LINGER).
 * Returns TMW_OK when all n are in (n == 0 included). Errors: TMW_ENOSLOT
 * (slot); TMW_EINVAL (n > 0 and data or lens is NULL, or how is not a
 * TMW_WAKE_*); TMW_ETOOBIG (some
 * lens[i] > max_record: checked first, nothing pushed); TMW_EAGAIN (timeout
 * 0 and not all fit); TMW_ETIMEDOUT; TMW_EINTR; TMW_ESYS (the sleep failed);
 * TMW_ECORRUPT (locking, or the ring's positions are inconsistent). */
int tmw_ring_push(tmw_ring *r, int slot, const char *data,
                  const uint32_t *lens, size_t n, uint32_t aux,
                  double timeout, int how, size_t *pushed, uint64_t *first_seq);

/* Push one record of len bytes: the common case, without out-parameters.
 * Returns its sequence number (> 0), or a negative code as tmw_ring_push
 * (TMW_EINVAL if data is NULL). */
int64_t tmw_ring_push_one(tmw_ring *r, int slot, const char *data, uint32_t len,
                          uint32_t aux, double timeout, int how);

/* A consumer's pop buffer and the results of one pop, kept in one struct so
 * that a call passes few arguments (each costs time in cffi). One call at a
 * time may use a given tmw_pop_buf and the buffers it points to. */
typedef struct {
    char *out;          /* in: where payloads go, back to back */
    size_t out_cap;     /* in: bytes available at out */
    uint32_t *lens;     /* in: room for max lengths */
    uint32_t *auxs;     /* in: room for max aux words */
    size_t n;           /* out: records popped */
    uint64_t first_seq; /* out: seq of the first (the rest are consecutive) */
    uint32_t first_len; /* out, TMW_EBUFSMALL: bytes the first record needs */
    uint32_t alone_mask; /* in: a record whose aux has one of these bits is
                            popped alone (a batch of one) */
    uint64_t linger_ns;  /* in: if the ring is empty, first linger this long (see
                            WAKE-UPS, LINGER; 0: sleep at once), once per call */
    uint64_t *stamps;   /* in: room for max push times (CLOCK_REALTIME ns), or NULL: not wanted */
    uint64_t spin_ns;   /* in: if the ring is empty, poll it this long before
                           sleeping, when longer than the ring's spin_ns (a
                           waiter that expects a record soon; 0: the ring's) */
} tmw_pop_buf;

/* Pop up to max records, oldest first, into b (payloads into b->out, their
 * lengths into b->lens, aux words into b->auxs, the wall-clock times of
 * their pushes into b->stamps unless it is NULL; b->n how many, at least 1
 * on TMW_OK). The records of one pop are consecutive in seq. If hold, they
 * are also recorded as held by the slot in the same critical section, and
 * the pop takes at most max_held minus what the slot holds. Waits while the
 * ring is empty, as the timeout says. A record with aux & b->alone_mask
 * ends a batch before it (it starts the next pop's) and is popped alone, so
 * a consumer that may be killed while running it holds nothing else. Wakes
 * a sleeping producer if any, and, when it leaves records behind, another
 * sleeping consumer. On every error nothing was taken (b->n == 0).
 * Errors: TMW_ENOSLOT (slot); TMW_EINVAL (max == 0, lens or auxs NULL, or
 * out NULL with out_cap > 0); TMW_EHELDFULL (hold, and the slot holds
 * max_held records: checked before waiting and again after each wait, never
 * waited on; another thread's release does not wake the call); TMW_EAGAIN
 * (timeout 0, ring empty); TMW_ETIMEDOUT; TMW_EINTR; TMW_ESYS (the sleep
 * failed); TMW_EBUFSMALL (the first record needs b->first_len bytes of out);
 * TMW_ECORRUPT (locking, the ring's positions, a record header, or the
 * slot's held count is inconsistent). */
int tmw_ring_pop(tmw_ring *r, int slot, tmw_pop_buf *b, size_t max, int hold,
                 double timeout);

/* For a consumer that waits in an event loop (asyncio's add_reader on
 * tmw_ring_data_fd) instead of inside tmw_ring_pop. tmw_ring_arm counts the
 * slot as armed, so producers will write the eventfd, then re-checks
 * the ring: it returns 1 if records are already there (pop them now, and
 * disarm first), 0 if the caller should wait for the eventfd. Once the
 * eventfd is readable, tmw_ring_disarm drains it, clears the pending
 * wake-up and stops counting the slot as armed; then pop. Each arm is
 * matched by one disarm. Safe against lost wake-ups in the same way as
 * tmw_ring_pop's own waits; but the eventfd is shared by every armed
 * consumer of the ring (any process), and a consumer asleep in tmw_ring_pop
 * is woken too, so another one may take the records first. Arms are
 * counted per slot (threads of one process share the count), apart from
 * the slot's sleepers in pop.
 * Errors: TMW_ENOSLOT (slot); disarm: TMW_EINVAL (the slot has no arm left
 * to match; nothing changed). */
int tmw_ring_arm(tmw_ring *r, int slot);
int tmw_ring_disarm(tmw_ring *r, int slot);

/* Wake a consumer (one asleep in pop, and the armed ones) if the ring holds
 * records: what a lazy push left undone. Returns 1 if it holds records
 * (a wake call was made if anybody sleeps and none is on its way), 0 if it
 * is empty (nothing done). Any thread, any process. No errors. */
int tmw_ring_wake(tmw_ring *r);

/* Release held records of a slot by sequence number (seqs that the slot
 * does not hold are ignored); seqs == NULL with n == 0 releases all the
 * slot holds, from whichever thread's pop (seqs != NULL with n == 0 releases
 * none). Does not wake anyone (a pop refused with TMW_EHELDFULL is not
 * retried). Errors: TMW_ENOSLOT (slot); TMW_EINVAL (seqs NULL, n > 0);
 * TMW_ECORRUPT (locking, or the slot's held count is inconsistent). */
int tmw_ring_release(tmw_ring *r, int slot, const uint64_t *seqs, size_t n);

/* Copy up to cap held records of a slot into out, in the order they were
 * popped (increasing seq); *n is how many it holds (may exceed cap).
 * Errors: TMW_ENOSLOT (slot); TMW_ECORRUPT (locking, or the slot's held
 * count is inconsistent). */
int tmw_ring_held(tmw_ring *r, int slot, tmw_held *out, size_t cap, size_t *n);

/* For a supervisor, after process pid has died: copy the records held by
 * pid's slots into out, set *n to how many there are, and free those slots
 * (with their share of the sleeper counts, and any wake-up flag a process
 * killed mid-wake left set). If *n > cap, out has only the first cap of
 * them and nothing is freed: call again with cap >= *n. A pid with no slot gives
 * *n == 0. Must not be called for a live pid that is still using the ring
 * (nor for the caller's own). Finishes first any commit a process killed
 * inside the lock left. Errors: TMW_EINVAL (pid <= 0); TMW_ECORRUPT
 * (locking). */
int tmw_ring_reclaim(tmw_ring *r, int32_t pid, tmw_held *out, size_t cap,
                     size_t *n);

/* OR bits into the aux word of record seq while it is still in the ring
 * (pushed and not yet popped), under the lock: a consumer that pops it
 * later sees the new aux. Walks the queued records from the oldest, so it
 * costs O(records queued before seq); meant for rare calls (taskmw's
 * cancel). Any thread, any process. Returns TMW_OK if the record was marked,
 * TMW_EAGAIN if seq is not in the ring (popped already, or never pushed).
 * Errors: TMW_ECORRUPT (locking, or a record header fails its checks). */
int tmw_ring_mark(tmw_ring *r, uint64_t seq, uint32_t bits);

/* What a reader sees of a queued record (tmw_ring_peek). */
typedef struct {
    uint64_t seq;
    uint64_t stamp_ns; /* when it was pushed: CLOCK_REALTIME, ns (one clock read per push call) */
    uint32_t len;      /* its whole payload's length */
    uint32_t aux;
} tmw_peeked;

/* For readers that show what is queued (taskmw's status() and listings):
 * copy the headers of up to max records still in the ring (pushed, not
 * popped), oldest first, starting at seq from (records before it are
 * skipped; a from at or below the oldest starts at the oldest), into recs,
 * and the first min(len, cap) bytes of record i's payload into
 * out + i * cap (cap 0: none). *n is how many were copied, in increasing
 * seq: consecutive, except where consumers popped records while the walk
 * went on (those are left out). It walks from the oldest record, as
 * tmw_ring_mark does, so it costs O(records queued before from + max), and
 * one call lists a range; it holds the lock for 512 records at a time at
 * most, so a walk deep into a long queue does not hold up pushes and pops
 * (between two holds, a walk whose next record was popped goes on from the
 * oldest). Any thread, any process; pops nothing, wakes nobody.
 * Errors: TMW_EINVAL (max > 0 and recs NULL, or cap > 0 and out NULL);
 * TMW_ECORRUPT (locking, the ring's positions, or a record header fails
 * its checks; *n == 0). */
int tmw_ring_peek(tmw_ring *r, uint64_t from, tmw_peeked *recs, size_t max, char *out, size_t cap,
                  size_t *n);

/* Records in the ring now (as tmw_ring_stats's records: a lock-free read,
 * cheap enough for a hot path's "anything there?"). No errors. */
uint64_t tmw_ring_records(tmw_ring *r);

/* Snapshot of the counters (see tmw_ring_stats), without the lock. */
void tmw_ring_get_stats(tmw_ring *r, tmw_ring_stats *out);

#endif
