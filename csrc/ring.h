/*
 * taskmw ring: a bounded multi-producer, multi-consumer queue of
 * variable-length records in one shared-memory region, with eventfd wake-ups.
 *
 * This header is the contract between the C core and its only caller, the
 * Python wrapper in taskmw/ring.py (through cffi). Everything here is
 * process-safe: a region created by tmw_ring_create() is inherited across
 * fork(), and any number of processes may push and pop at once. A handle
 * (tmw_ring *) is per process; threads of one process may share it, but a
 * slot (see below) must be used by one thread at a time.
 *
 * Errors: functions return 0 (TMW_OK) or a negative TMW_E* code; they never
 * abort and never print. Lengths read from shared memory are bounds-checked:
 * a corrupt region gives TMW_ECORRUPT, not a crash.
 *
 * Slots: every process using the ring claims a slot (tmw_ring_slot_claim).
 * A slot is where a consumer's pop records which records it took ("held"),
 * in the same critical section that removes them from the ring, so that if
 * the consumer is killed at any instant a supervisor can list exactly what it
 * held (tmw_ring_reclaim). A record stays held until the consumer releases it.
 */
#ifndef TASKMW_RING_H
#define TASKMW_RING_H

#include <stddef.h>
#include <stdint.h>

/* Return codes. */
#define TMW_OK 0
#define TMW_EAGAIN (-1)     /* ring empty (pop) or full (push), no wait asked */
#define TMW_ETIMEDOUT (-2)  /* waited the whole timeout */
#define TMW_EINTR (-3)      /* a signal interrupted the wait: call again */
#define TMW_ETOOBIG (-4)    /* record larger than tmw_ring_max_record() */
#define TMW_EBUFSMALL (-5)  /* pop: first record does not fit the out buffer */
#define TMW_ECORRUPT (-6)   /* shared memory failed a consistency check */
#define TMW_EHELDFULL (-7)  /* pop: the slot already holds max_held records */
#define TMW_ENOSLOT (-8)    /* no free slot, or slot index out of range */
#define TMW_EINVAL (-9)     /* bad argument */
#define TMW_ESYS (-10)      /* a system call failed: see errno */

/* Counters kept in shared memory (monotonic since creation). */
typedef struct {
    uint64_t capacity;      /* data bytes in the ring */
    uint64_t max_record;    /* largest record payload accepted */
    uint64_t used_bytes;    /* bytes occupied now, headers included */
    uint64_t records;       /* records in the ring now */
    uint64_t pushed;        /* records ever pushed */
    uint64_t popped;        /* records ever popped */
    uint64_t next_seq;      /* sequence number the next record will get */
    uint64_t wakeups;       /* eventfd writes made (data and space) */
    uint64_t push_waits;    /* push calls that had to wait for space */
    uint64_t pop_waits;     /* pop calls that had to wait for records */
    uint64_t recoveries;    /* times a lock was taken over from a dead owner */
    uint32_t nslots;
    uint32_t max_held;
} tmw_ring_stats;

/* One record a consumer holds: its sequence number and producer's aux word. */
typedef struct {
    uint64_t seq;
    uint32_t aux;
    uint32_t _pad;
} tmw_held;

typedef struct tmw_ring tmw_ring;

/* Create a ring in a new anonymous region (memfd, close-on-exec; no file in
 * any directory). capacity: data bytes, rounded up to a multiple of 16, at
 * least 64. nslots: processes that may use the ring at once (>= 1).
 * max_held: records one slot may hold at once (>= 1). spin_ns: how long a
 * waiter polls before sleeping on the eventfd (0: sleep at once).
 * On success *out owns the region; free it with tmw_ring_close(). */
int tmw_ring_create(uint64_t capacity, uint32_t nslots, uint32_t max_held,
                    uint64_t spin_ns, tmw_ring **out);

/* Unmap and close this process's handle. Other processes are unaffected. */
void tmw_ring_close(tmw_ring *r);

/* File descriptors: the memfd of the region, and the eventfd that is written
 * when records arrive for a sleeping consumer. */
int tmw_ring_memfd(const tmw_ring *r);
int tmw_ring_data_fd(const tmw_ring *r);

/* Largest payload one record may carry, in bytes. */
uint64_t tmw_ring_max_record(const tmw_ring *r);

/* Byte offset of the data area inside the region (for tests that corrupt it
 * on purpose through the memfd). */
uint64_t tmw_ring_data_offset(const tmw_ring *r);

/* Claim a free slot for process pid; returns the slot index (>= 0) or
 * TMW_ENOSLOT. When none is free, slots of dead processes that hold no
 * records are freed and reused (those that hold records wait for
 * tmw_ring_reclaim, so nothing they held is forgotten). */
int tmw_ring_slot_claim(tmw_ring *r, int32_t pid);

/* Push n records. data holds their payloads back to back; lens[i] is the
 * length of record i. Every record carries the 32-bit aux word. Records go
 * in whole and in order: *pushed is set to how many went in (a prefix), and
 * *first_seq to the sequence number of the first one (the others follow
 * consecutively only within one call's prefix when *pushed == n and the
 * call did not have to wait; in general seq numbers are unique and
 * increasing per ring). timeout < 0 waits forever, 0 never waits.
 * Returns TMW_OK when all n are in; otherwise the reason the rest are not. */
int tmw_ring_push(tmw_ring *r, int slot, const char *data,
                  const uint32_t *lens, size_t n, uint32_t aux,
                  double timeout, size_t *pushed, uint64_t *first_seq);

/* Push one record of len bytes: the common case, without out-parameters.
 * Returns its sequence number (> 0), or a negative TMW_E* code. */
int64_t tmw_ring_push_one(tmw_ring *r, int slot, const char *data, uint32_t len,
                          uint32_t aux, double timeout);

/* A consumer's pop buffer and the results of one pop, kept in one struct so
 * that a call passes few arguments (each costs time in cffi). */
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
} tmw_pop_buf;

/* Pop up to max records into b (payloads into b->out, their lengths into
 * b->lens, aux words into b->auxs). If hold, each is recorded as held by the
 * slot, in the same critical section. Waits while the ring is empty
 * (timeout < 0 forever, 0 never). TMW_EBUFSMALL: the first record needs
 * b->first_len bytes of out; nothing was taken. TMW_EHELDFULL: the slot
 * holds max_held records already. A record with aux & b->alone_mask ends a
 * batch before it (it starts the next pop's) and is popped alone, so a
 * consumer that may be killed while running it holds nothing else. */
int tmw_ring_pop(tmw_ring *r, int slot, tmw_pop_buf *b, size_t max, int hold,
                 double timeout);

/* For a consumer that waits in an event loop (asyncio's add_reader on
 * tmw_ring_data_fd) instead of inside tmw_ring_pop. tmw_ring_arm counts the
 * slot as a sleeper, so producers will write the eventfd, then re-checks
 * the ring: it returns 1 if records are already there (pop them now, and
 * disarm first), 0 if the caller should wait for the eventfd. Once the
 * eventfd is readable, tmw_ring_disarm drains it, clears the pending
 * wake-up and stops counting the slot as a sleeper; then pop. Each arm is
 * matched by one disarm. Safe against lost wake-ups in the same way as
 * tmw_ring_pop's own waits. */
int tmw_ring_arm(tmw_ring *r, int slot);
int tmw_ring_disarm(tmw_ring *r, int slot);

/* Release held records of a slot by sequence number (unknown ones are
 * ignored); n == 0 with seqs == NULL releases all. */
int tmw_ring_release(tmw_ring *r, int slot, const uint64_t *seqs, size_t n);

/* Copy up to cap held records of a slot into out; *n is how many it holds. */
int tmw_ring_held(tmw_ring *r, int slot, tmw_held *out, size_t cap, size_t *n);

/* For a supervisor, after process pid has died: copy up to cap records held
 * by pid's slots into out (*n how many there were), and free those slots.
 * Must not be called for a live pid that is still using the ring. */
int tmw_ring_reclaim(tmw_ring *r, int32_t pid, tmw_held *out, size_t cap,
                     size_t *n);

/* Snapshot of the counters. */
void tmw_ring_get_stats(tmw_ring *r, tmw_ring_stats *out);

#endif
