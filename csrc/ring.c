/*
 * taskmw ring: the C core. See ring.h for the contract.
 *
 * Design, and why:
 *
 * - Locking: one robust, process-shared pthread mutex guards the ring.
 *   We chose it over a lock-free design because records have variable
 *   length (a lock-free MPMC ring of variable-length records needs
 *   per-record commit flags and reclaim protocols that are hard to make
 *   crash-safe), while a robust mutex gives a simple story for a process
 *   that dies inside a critical section: the next locker gets EOWNERDEAD
 *   from the kernel's robust-futex list and repairs the state (below).
 *   Critical sections are short (a header check and a memcpy), and
 *   consumers take many records per lock; lockers spin briefly on trylock
 *   before sleeping.
 *
 * - Crash safety: every change to the shared state (head, tail, sequence
 *   numbers, a slot's held count) is made by one commit() that first writes
 *   the new values into a journal, marks it valid, applies it, and clears
 *   it. Record bytes and held entries are written *before* the commit, in
 *   space no one reads yet. So whenever a process dies, the state is either
 *   the old one (journal not valid: the partial bytes are ignored) or the
 *   new one (journal valid: the next locker re-applies it, idempotently).
 *   Releasing held records tombstones them (seq 0) one 8-byte store at a
 *   time, then compacts: a death at any point leaves every still-held
 *   record listed (perhaps twice; readers skip tombstones and duplicates).
 *
 * - Waking: a waiter spins for spin_ns, then increments a waiter count,
 *   reads its side's futex word, re-checks the ring and sleeps in
 *   FUTEX_WAIT on that word. A producer, after committing, wakes only if
 *   the waiter count is non-zero and no wake-up is already pending (a
 *   "signalled" flag), so a busy ring makes no system call per record; it
 *   bumps the word and calls FUTEX_WAKE for ONE sleeper. One record wakes
 *   one idle consumer, not all of them: an eventfd (what this used before)
 *   wakes every process polling it, and all but one went back to sleep
 *   after a wasted context switch each. The count increment and the
 *   re-check, and the producer's commit and count read, are sequentially
 *   consistent (a full fence on the producer side), and a word bumped
 *   between the sleeper's read and its FUTEX_WAIT makes the wait return at
 *   once, so a wake-up cannot be lost. A process killed while asleep is
 *   gone from the kernel's futex queue, so a wake-up goes to a live
 *   sleeper; its share of the count stays until reclaim (producers then
 *   make a wake call that finds nobody, never a lost one). Sleeps are cut
 *   into slices of SLICE_NS so that a flag left set by a process killed in
 *   the middle of a wake-up heals itself. A consumer that leaves records
 *   behind, and a producer that leaves room, wakes the next sleeper of its
 *   side (chain wake-up): every sleeper that can proceed does, without
 *   waiting out a slice. Event-loop consumers (tmw_ring_arm) cannot wait
 *   on a futex: they are counted apart and woken through the data eventfd.
 *
 * - Bounds: the geometry (capacity, slot count, held limit) is copied into
 *   each process's handle at creation and never re-read from shared memory.
 *   Every length, position and sequence number read from shared memory is
 *   checked against it; a mismatch returns TMW_ECORRUPT.
 *
 * Layout of the region: [header, 4 KiB][slots][data: capacity bytes].
 * Records in data: a 32-byte header {len, aux, seq, stamp, pad} at a
 * 16-byte aligned position, then len payload bytes (wrapping around the end
 * if needed), padded to 16. Positions head/tail are monotonic byte counters;
 * the byte offset is position % capacity (capacity is a multiple of 16, so
 * the header's first 16 bytes, {len, aux, seq}, never wrap; its second half,
 * the stamp, may: headers are copied with put_bytes/get_bytes). The stamp is
 * the wall-clock time of the push (CLOCK_REALTIME, ns): one clock read per
 * push call, through the vDSO, outside the lock.
 */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x32474e49524d5754ULL /* "TWMRING2": 32-byte record headers with a stamp, the lingerer flag */
#define HDR_SIZE 4096
#define REC_HDR 32
#define SLICE_NS 100000000ULL /* longest single sleep: 100 ms */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define PUBLISH(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define BUMP(p) __atomic_add_fetch((p), 1, __ATOMIC_RELAXED)

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

typedef struct {
    uint32_t len;
    uint32_t aux;
    uint64_t seq;
    uint64_t stamp; /* CLOCK_REALTIME of the push, ns */
    uint64_t _pad;
} rec_hdr;

/* The shared state a commit changes. */
typedef struct {
    uint64_t head;     /* position of the oldest record */
    uint64_t tail;     /* position where the next record goes */
    uint64_t head_seq; /* seq of the record at head */
    uint64_t next_seq; /* seq the next pushed record gets */
} ring_state;

typedef struct {
    uint32_t valid;
    int32_t slot;        /* slot whose held_count changes, or -1 */
    uint32_t held_count; /* its new value */
    uint32_t _pad;
    ring_state st;
} journal;

typedef struct {
    uint64_t magic;
    uint64_t capacity;
    uint32_t nslots;
    uint32_t max_held;
    pthread_mutex_t lock;
    journal jr;
    ring_state st __attribute__((aligned(64)));
    /* Waiters, futex words and wake-up flags, touched outside the lock. */
    uint32_t data_waiters __attribute__((aligned(64))); /* consumers asleep in pop */
    uint32_t data_signalled; /* a FUTEX_WAKE of data_futex is on its way to one of them */
    uint32_t data_futex;     /* bumped by each wake-up of a consumer asleep in pop */
    uint32_t space_waiters;  /* producers asleep in push */
    uint32_t space_signalled;
    uint32_t space_futex;
    uint32_t arm_waiters;    /* event-loop consumers armed on the data eventfd */
    uint32_t arm_signalled;  /* the data eventfd was written and not drained yet */
    uint32_t lingerer;       /* 1 while a consumer lingers in pop (at most one does; see linger) */
    /* Counters (relaxed). */
    uint64_t wakeups __attribute__((aligned(64)));
    uint64_t push_waits;
    uint64_t pop_waits;
    uint64_t recoveries;
    uint64_t woken;
} shared_hdr;

typedef struct {
    int32_t pid;           /* owner, 0 when free */
    uint32_t held_count;   /* entries in held[], tombstones included */
    uint32_t sleeping_data;  /* this slot's share of data_waiters */
    uint32_t sleeping_space; /* this slot's share of space_waiters */
    uint32_t armed;          /* tmw_ring_arm calls not yet matched by a disarm (its share of arm_waiters) */
    uint32_t lingering;      /* 1 while a thread of this slot is the ring's lingerer */
    uint32_t _pad[2];
    tmw_held held[];       /* max_held entries */
} slot_hdr;

struct tmw_ring {
    shared_hdr *h;
    char *base;
    char *data;
    size_t region_size;
    size_t slot_stride;
    uint64_t capacity;
    uint32_t nslots;
    uint32_t max_held;
    uint64_t spin_ns;
    int memfd;
    int efd_data;
};

_Static_assert(sizeof(shared_hdr) <= HDR_SIZE, "header fits its page");
_Static_assert(sizeof(rec_hdr) == REC_HDR, "record header is 32 bytes");
_Static_assert(offsetof(rec_hdr, stamp) == 16, "len, aux and seq are the first 16 bytes (never wrapped)");

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t deadline_of(double timeout) {
    if (timeout < 0) return UINT64_MAX;
    if (timeout > 1e9) timeout = 1e9;
    return now_ns() + (uint64_t)(timeout * 1e9);
}

static uint64_t span_of(uint64_t len) { return REC_HDR + ((len + 15) & ~(uint64_t)15); }

static slot_hdr *slot_at(tmw_ring *r, int slot) {
    return (slot_hdr *)(r->base + HDR_SIZE + (size_t)slot * r->slot_stride);
}

/* ---- locking and crash recovery ---------------------------------------- */

static void apply_journal(tmw_ring *r) {
    shared_hdr *h = r->h;
    journal *j = &h->jr;
    PUBLISH(&h->st.head_seq, j->st.head_seq);
    PUBLISH(&h->st.next_seq, j->st.next_seq);
    PUBLISH(&h->st.head, j->st.head);
    PUBLISH(&h->st.tail, j->st.tail);
    if (j->slot >= 0 && (uint32_t)j->slot < r->nslots && j->held_count <= r->max_held)
        PUBLISH(&slot_at(r, j->slot)->held_count, j->held_count);
}

/* Make st (and a slot's held count) the new shared state, crash-safely. */
static void commit(tmw_ring *r, const ring_state *st, int slot, uint32_t held_count) {
    journal *j = &r->h->jr;
    j->st = *st;
    j->slot = slot;
    j->held_count = held_count;
    PUBLISH(&j->valid, 1);
    apply_journal(r);
    PUBLISH(&j->valid, 0);
}

#define LOCK_SPINS 200 /* trylock attempts before sleeping: a few microseconds */

static int lock(tmw_ring *r) {
    /* Critical sections are short, so a contended lock is usually free
     * again within a few microseconds: spin on trylock before paying for a
     * futex sleep and wake-up. */
    int rc = EBUSY;
    for (int i = 0; i < LOCK_SPINS && rc == EBUSY; i++) {
        rc = pthread_mutex_trylock(&r->h->lock);
        if (rc == EBUSY) CPU_RELAX();
    }
    if (rc == EBUSY) rc = pthread_mutex_lock(&r->h->lock);
    if (rc == EOWNERDEAD) {
        /* The previous owner died inside a critical section: finish (or
         * drop) what it was doing, then mark the mutex usable again. */
        if (LOAD(&r->h->jr.valid)) {
            apply_journal(r);
            STORE(&r->h->jr.valid, 0);
        }
        BUMP(&r->h->recoveries);
        pthread_mutex_consistent(&r->h->lock);
        return TMW_OK;
    }
    return rc == 0 ? TMW_OK : TMW_ECORRUPT;
}

static void unlock(tmw_ring *r) { pthread_mutex_unlock(&r->h->lock); }

/* Check the shared state against the geometry. */
static int check_state(tmw_ring *r, const ring_state *st) {
    uint64_t used = st->tail - st->head;
    if (used > r->capacity || (st->head & 15) || (st->tail & 15)) return TMW_ECORRUPT;
    if (st->next_seq < st->head_seq) return TMW_ECORRUPT;
    if ((used == 0) != (st->next_seq == st->head_seq)) return TMW_ECORRUPT;
    return TMW_OK;
}

/* Lock the ring and copy its shared state into *st, checked; on any error
 * the ring is left unlocked. */
static int lock_state(tmw_ring *r, ring_state *st) {
    int rc = lock(r);
    if (rc) return rc;
    *st = r->h->st;
    rc = check_state(r, st);
    if (rc) unlock(r);
    return rc;
}

/* ---- waiting and waking ------------------------------------------------ */

static int ring_nonempty(tmw_ring *r) { return LOAD(&r->h->st.tail) != LOAD(&r->h->st.head); }

static int ring_has_space(tmw_ring *r, uint64_t need) {
    uint64_t used = LOAD(&r->h->st.tail) - LOAD(&r->h->st.head);
    return used > r->capacity || r->capacity - used >= need; /* corrupt: let the locker see it */
}

/* One side's sleepers: those asleep in pop (data) or in push (space). They
 * sleep on a futex word of the shared header (not a private futex: the
 * kernel keys it by the memfd's page, so every process mapping the region
 * shares it), and a wake-up is FUTEX_WAKE of one: exactly one sleeper
 * runs, the others sleep on. (An eventfd wakes every poller of it.) */
typedef struct {
    uint32_t *waiters;   /* sleepers now, in every process */
    uint32_t *signalled; /* a wake-up is on its way and no sleeper has taken it yet */
    uint32_t *futex;     /* bumped by each wake-up, waited on by the sleepers */
    uint32_t *lingerer;  /* data side: the lingering consumer, also asleep on futex (NULL: none) */
} sleepers;

static sleepers data_side(tmw_ring *r) {
    return (sleepers){&r->h->data_waiters, &r->h->data_signalled, &r->h->data_futex, &r->h->lingerer};
}

static sleepers space_side(tmw_ring *r) {
    return (sleepers){&r->h->space_waiters, &r->h->space_signalled, &r->h->space_futex, NULL};
}

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, word, op, val, ts, NULL, 0);
}

/* Wake one sleeper of a side if any sleeps and no wake-up is pending. */
static void wake(tmw_ring *r, sleepers q) {
    /* Order the commit's stores before the waiter check (Dekker with the
     * waiter's increment-then-recheck in wait_for). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (LOAD(q.waiters) == 0 && (q.lingerer == NULL || LOAD(q.lingerer) == 0)) return;
    if (__atomic_exchange_n(q.signalled, 1, __ATOMIC_SEQ_CST) != 0) return;
    /* Bump the word first: a sleeper that read the old value and has not
     * reached FUTEX_WAIT yet then returns at once instead of sleeping. */
    ADD(q.futex, 1);
    if (futex(q.futex, FUTEX_WAKE, 1, NULL) <= 0) {
        /* Nobody was in FUTEX_WAIT: the count had a process killed asleep
         * (until reclaim), or sleepers on their way in, which see the record
         * or the bumped word. Nobody will take this wake-up and clear the
         * flag: clear it, or the next record would skip its wake-up and a
         * consumer going to sleep now would wait out its slice. */
        STORE(q.signalled, 0);
    }
    BUMP(&r->h->wakeups);
}

/* Write the data eventfd if an event-loop consumer is armed and it is not
 * written already. */
static void wake_armed(tmw_ring *r) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (LOAD(&r->h->arm_waiters) == 0) return;
    if (__atomic_exchange_n(&r->h->arm_signalled, 1, __ATOMIC_SEQ_CST) != 0) return;
    uint64_t one = 1;
    ssize_t w = write(r->efd_data, &one, sizeof one);
    (void)w; /* EAGAIN only if the counter is saturated: a wake-up is pending anyway */
    BUMP(&r->h->wakeups);
}

/* Records arrived: wake one consumer asleep in pop, and the armed ones. */
static void wake_consumers(tmw_ring *r) {
    wake(r, data_side(r));
    wake_armed(r);
}

/* Records arrived by a TMW_WAKE_SOON push: as wake_consumers, unless a
 * consumer lingers, which will find them when its linger ends (Dekker
 * again: the commit, a full fence, then this load; the lingerer clears its
 * flag, then re-checks the ring). */
static void wake_soon(tmw_ring *r) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (LOAD(&r->h->lingerer)) {
        wake_armed(r);
        return;
    }
    wake_consumers(r);
}

/* Wait until ready(r, arg) or the deadline. Spin first (spin_ns), then sleep on the
 * side's futex, in slices of at most SLICE_NS. */
static int wait_for(tmw_ring *r, int (*ready)(tmw_ring *, uint64_t), uint64_t arg, sleepers q,
                    uint32_t *mine, uint64_t spin_ns, uint64_t deadline) {
    if (ready(r, arg)) return TMW_OK;
    uint64_t start = now_ns();
    if (spin_ns) {
        uint64_t until = start + spin_ns;
        if (until > deadline) until = deadline;
        for (unsigned i = 1;; i++) {
            if (ready(r, arg)) return TMW_OK;
            CPU_RELAX();
            if ((i & 63) == 0 && now_ns() >= until) break;
        }
    }
    ADD(q.waiters, 1); /* seq-cst: the re-check below comes after it */
    ADD(mine, 1);
    uint32_t seen = LOAD(q.futex); /* read before the re-check: a wake-up after it changes the word */
    int rc = TMW_OK;
    if (!ready(r, arg)) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            rc = TMW_ETIMEDOUT;
        } else {
            uint64_t ns = deadline - now;
            if (ns > SLICE_NS) ns = SLICE_NS;
            struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
            if (futex(q.futex, FUTEX_WAIT, seen, &ts) == 0) BUMP(&r->h->woken);
            else if (errno == EINTR) rc = TMW_EINTR;
            else if (errno != ETIMEDOUT && errno != EAGAIN) rc = TMW_ESYS;
        }
    }
    /* Whoever leaves a sleep clears the flag (a woken sleeper took the
     * wake-up; one leaving on a timeout heals a flag left set by a process
     * killed between setting it and waking). */
    STORE(q.signalled, 0);
    ADD(mine, -1);
    ADD(q.waiters, -1);
    return rc;
}

static int data_ready(tmw_ring *r, uint64_t unused) { return ring_nonempty(r); }

/* Linger: sleep up to ns (not past the deadline) on the data futex as the
 * ring's one lingering consumer. TMW_WAKE_SOON pushes do not wake a
 * lingerer (it looks at the ring when its linger ends); every other wake-up
 * of the data side does. Returns TMW_EAGAIN at once if another consumer
 * lingers already (the caller sleeps as usual), else TMW_OK or TMW_EINTR
 * when the linger is over, whatever it found (the caller re-checks). */
static int linger(tmw_ring *r, slot_hdr *s, uint64_t ns, uint64_t deadline) {
    uint32_t none = 0;
    if (!__atomic_compare_exchange_n(&r->h->lingerer, &none, 1, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return TMW_EAGAIN;
    STORE(&s->lingering, 1); /* reclaim clears the ring's flag if this process dies lingering */
    uint32_t seen = LOAD(&r->h->data_futex); /* before the re-check, as in wait_for */
    int rc = TMW_OK;
    if (!ring_nonempty(r)) {
        uint64_t now = now_ns();
        if (now < deadline) {
            if (ns > deadline - now) ns = deadline - now;
            struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
            if (futex(&r->h->data_futex, FUTEX_WAIT, seen, &ts) == 0) BUMP(&r->h->woken);
            else if (errno == EINTR) rc = TMW_EINTR;
        }
    }
    STORE(&r->h->data_signalled, 0); /* whoever leaves a sleep clears the flag (see wait_for) */
    STORE(&s->lingering, 0);
    STORE(&r->h->lingerer, 0); /* seq-cst: the caller's re-check of the ring comes after it */
    return rc;
}

static int space_ready(tmw_ring *r, uint64_t need) { return ring_has_space(r, need); }

/* An event-loop consumer's wait is a sleep on the data eventfd, split in
 * two. Arms are counted apart from the pop sleepers (arm_waiters, and the
 * slot's armed): an unmatched disarm must be refused, and consumers asleep
 * in pop are woken through the futex, not the eventfd. */
int tmw_ring_arm(tmw_ring *r, int slot) {
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    slot_hdr *s = slot_at(r, slot);
    ADD(&s->armed, 1);
    ADD(&r->h->arm_waiters, 1); /* seq-cst: the caller re-checks the ring after this */
    return ring_nonempty(r);
}

int tmw_ring_disarm(tmw_ring *r, int slot) {
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    slot_hdr *s = slot_at(r, slot);
    uint32_t armed = LOAD(&s->armed);
    do {
        if (armed == 0) return TMW_EINVAL; /* not armed */
    } while (!__atomic_compare_exchange_n(&s->armed, &armed, armed - 1, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));
    uint64_t v;
    ssize_t got = read(r->efd_data, &v, sizeof v); /* EAGAIN: nothing pending, or another took it */
    (void)got;
    /* Clear the flag after draining the eventfd (never before: a producer
     * seeing the flag set skips its write, and the caller re-checks the ring
     * after this). */
    STORE(&r->h->arm_signalled, 0);
    ADD(&r->h->arm_waiters, -1);
    return TMW_OK;
}

int tmw_ring_wake(tmw_ring *r) {
    if (!ring_nonempty(r)) return 0;
    wake_consumers(r);
    return 1;
}

/* ---- life cycle -------------------------------------------------------- */

/* The memfd's layout: the shared header, nslots slots of stride bytes
 * (64-byte aligned), padding to a page, then the data area of capacity
 * bytes at *data_off. Returns the memfd's whole size. */
static size_t ring_layout(uint64_t capacity, uint32_t nslots, uint32_t max_held, size_t *stride,
                          size_t *data_off) {
    *stride = (sizeof(slot_hdr) + (size_t)max_held * sizeof(tmw_held) + 63) & ~(size_t)63;
    *data_off = (HDR_SIZE + *stride * nslots + 4095) & ~(size_t)4095;
    return *data_off + capacity;
}

/* This process's view of a mapped ring (the same for its creator and for a
 * process that opened it from the fds). */
static void ring_map(tmw_ring *r, size_t size, size_t stride, size_t data_off, uint64_t capacity,
                     uint32_t nslots, uint32_t max_held, uint64_t spin_ns) {
    r->region_size = size;
    r->h = (shared_hdr *)r->base;
    r->data = r->base + data_off;
    r->slot_stride = stride;
    r->capacity = capacity;
    r->nslots = nslots;
    r->max_held = max_held;
    r->spin_ns = spin_ns;
}

int tmw_ring_create(uint64_t capacity, uint32_t nslots, uint32_t max_held, uint64_t spin_ns,
                    tmw_ring **out) {
    if (!out || nslots < 1 || max_held < 1 || capacity < 64 || capacity > (1ULL << 40))
        return TMW_EINVAL;
    capacity = (capacity + 15) & ~(uint64_t)15;
    size_t stride, data_off;
    size_t size = ring_layout(capacity, nslots, max_held, &stride, &data_off);

    tmw_ring *r = calloc(1, sizeof *r);
    if (!r) return TMW_ESYS;
    r->memfd = r->efd_data = -1;
    r->memfd = memfd_create("taskmw-ring", MFD_CLOEXEC);
    if (r->memfd < 0 || ftruncate(r->memfd, (off_t)size) < 0) goto fail;
    r->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd, 0);
    if (r->base == MAP_FAILED) {
        r->base = NULL;
        goto fail;
    }
    r->efd_data = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd_data < 0) goto fail;
    ring_map(r, size, stride, data_off, capacity, nslots, max_held, spin_ns);

    shared_hdr *h = r->h;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        errno = rc;
        goto fail;
    }
    h->capacity = capacity;
    h->nslots = nslots;
    h->max_held = max_held;
    h->st.head_seq = h->st.next_seq = 1; /* seq 0 marks a released held entry */
    h->magic = MAGIC;
    *out = r;
    return TMW_OK;
fail:
    tmw_ring_close(r);
    return TMW_ESYS;
}

int tmw_ring_open(int memfd, int efd_data, uint64_t spin_ns, tmw_ring **out) {
    if (!out || memfd < 0 || efd_data < 0) return TMW_EINVAL;
    struct stat st;
    if (fstat(memfd, &st) < 0) return TMW_ESYS;
    if ((uint64_t)st.st_size < HDR_SIZE) return TMW_ECORRUPT;
    shared_hdr *peek = mmap(NULL, HDR_SIZE, PROT_READ, MAP_SHARED, memfd, 0);
    if (peek == MAP_FAILED) return TMW_ESYS;
    uint64_t magic = LOAD(&peek->magic), capacity = peek->capacity;
    uint32_t nslots = peek->nslots, max_held = peek->max_held;
    munmap(peek, HDR_SIZE);
    if (magic != MAGIC || nslots < 1 || max_held < 1 || capacity < 64 || capacity > (1ULL << 40) ||
        (capacity & 15))
        return TMW_ECORRUPT;
    size_t stride, data_off;
    size_t size = ring_layout(capacity, nslots, max_held, &stride, &data_off);
    if ((uint64_t)st.st_size != size) return TMW_ECORRUPT;
    tmw_ring *r = calloc(1, sizeof *r);
    if (!r) return TMW_ESYS;
    r->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (r->base == MAP_FAILED) {
        free(r);
        return TMW_ESYS;
    }
    r->memfd = memfd;
    r->efd_data = efd_data;
    ring_map(r, size, stride, data_off, capacity, nslots, max_held, spin_ns);
    *out = r;
    return TMW_OK;
}

void tmw_ring_close(tmw_ring *r) {
    if (!r) return;
    int saved = errno;
    if (r->base) munmap(r->base, r->region_size);
    if (r->memfd >= 0) close(r->memfd);
    if (r->efd_data >= 0) close(r->efd_data);
    free(r);
    errno = saved;
}

int tmw_ring_memfd(const tmw_ring *r) { return r->memfd; }
int tmw_ring_data_fd(const tmw_ring *r) { return r->efd_data; }
uint64_t tmw_ring_max_record(const tmw_ring *r) { return r->capacity - REC_HDR; }
uint64_t tmw_ring_data_offset(const tmw_ring *r) { return (uint64_t)(r->data - r->base); }

/* Free the slots of dead process pid, returning what they held (up to cap
 * entries in out); only if they hold at most cap. Caller holds the lock. */
static size_t release_slots_of(tmw_ring *r, int32_t pid, tmw_held *out, size_t cap);

static int try_claim(tmw_ring *r, int32_t pid) {
    for (uint32_t i = 0; i < r->nslots; i++) {
        slot_hdr *s = slot_at(r, (int)i);
        int32_t expected = 0;
        if (__atomic_compare_exchange_n(&s->pid, &expected, pid, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return (int)i;
    }
    return TMW_ENOSLOT;
}

int tmw_ring_slot_claim(tmw_ring *r, int32_t pid) {
    if (pid <= 0) return TMW_EINVAL;
    int slot = try_claim(r, pid);
    if (slot != TMW_ENOSLOT) return slot;
    /* All taken. Processes that died without reclaim() (an HTTP worker
     * recycled by its server, say) leave their slot behind: reuse those
     * that hold nothing. A dead consumer's held records are never dropped
     * here; they wait for a supervisor's reclaim(). */
    if (lock(r)) return TMW_ECORRUPT;
    for (uint32_t i = 0; i < r->nslots; i++) {
        slot_hdr *s = slot_at(r, (int)i);
        int32_t owner = LOAD(&s->pid);
        if (owner > 0 && owner != pid && kill(owner, 0) < 0 && errno == ESRCH)
            release_slots_of(r, owner, NULL, 0);
    }
    unlock(r);
    return try_claim(r, pid);
}

/* ---- push --------------------------------------------------------------- */

/* Copy n bytes into the data area at position pos, wrapping at the end. */
static void put_bytes(tmw_ring *r, uint64_t pos, const char *src, uint64_t n) {
    uint64_t off = pos % r->capacity;
    uint64_t first = r->capacity - off;
    if (first >= n) {
        memcpy(r->data + off, src, n);
    } else {
        memcpy(r->data + off, src, first);
        memcpy(r->data, src + first, n - first);
    }
}

static void get_bytes(tmw_ring *r, uint64_t pos, char *dst, uint64_t n) {
    uint64_t off = pos % r->capacity;
    uint64_t first = r->capacity - off;
    if (first >= n) {
        memcpy(dst, r->data + off, n);
    } else {
        memcpy(dst, r->data + off, first);
        memcpy(dst + first, r->data, n - first);
    }
}

int tmw_ring_push(tmw_ring *r, int slot, const char *data, const uint32_t *lens, size_t n,
                  uint32_t aux, double timeout, int how, size_t *pushed, uint64_t *first_seq) {
    *pushed = 0;
    *first_seq = 0;
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    if (n && (!data || !lens)) return TMW_EINVAL;
    if (how != TMW_WAKE_NOW && how != TMW_WAKE_LAZY && how != TMW_WAKE_SOON) return TMW_EINVAL;
    uint64_t max_record = tmw_ring_max_record(r);
    for (size_t i = 0; i < n; i++)
        if (lens[i] > max_record) return TMW_ETOOBIG;
    uint64_t deadline = deadline_of(timeout);
    uint64_t stamp = wall_ns(); /* outside the lock: every record of the call gets it */
    size_t done = 0;
    const char *src = data;
    int waited = 0;
    for (;;) {
        ring_state st;
        int rc = lock_state(r, &st);
        if (rc) return rc;
        size_t before = done;
        while (done < n) {
            uint64_t span = span_of(lens[done]);
            if (r->capacity - (st.tail - st.head) < span) break;
            rec_hdr rh = {lens[done], aux, st.next_seq, stamp, 0};
            put_bytes(r, st.tail, (const char *)&rh, REC_HDR);
            put_bytes(r, st.tail + REC_HDR, src, lens[done]);
            if (done == 0) *first_seq = st.next_seq;
            src += lens[done];
            st.tail += span;
            st.next_seq++;
            done++;
        }
        if (done > before) commit(r, &st, -1, 0);
        unlock(r);
        *pushed = done;
        if (done > before) {
            if (how == TMW_WAKE_NOW) wake_consumers(r);
            else if (how == TMW_WAKE_SOON) wake_soon(r);
            /* TMW_WAKE_LAZY: the caller wakes them later (tmw_ring_wake) */
            /* Pass the wake-up on while there is room left (enough for the
             * smallest record: we cannot know what the others need). The pop
             * that made room wrote the eventfd once, and only whichever
             * sleeper drained it first got through (maybe us); the others
             * went back to sleep and would wait out their slice although
             * they fit. Every producer that gets in wakes the next, as
             * faster-fifo does for its writers (and pop below for readers);
             * one that does not get in passes nothing on, so sleepers that
             * cannot proceed never wake each other in a loop. */
            if (r->capacity - (st.tail - st.head) >= REC_HDR)
                wake(r, space_side(r));
        }
        if (done == n) return TMW_OK;
        if (timeout == 0) return TMW_EAGAIN;
        if (!waited++) BUMP(&r->h->push_waits);
        slot_hdr *s = slot_at(r, slot);
        rc = wait_for(r, space_ready, span_of(lens[done]), space_side(r), &s->sleeping_space, r->spin_ns,
                      deadline);
        if (rc == TMW_ETIMEDOUT || rc == TMW_EINTR || rc == TMW_ESYS) {
            if (rc == TMW_ETIMEDOUT && ring_has_space(r, span_of(lens[done]))) continue;
            return rc;
        }
    }
}

int64_t tmw_ring_push_one(tmw_ring *r, int slot, const char *data, uint32_t len,
                          uint32_t aux, double timeout, int how) {
    size_t pushed;
    uint64_t seq;
    int rc = tmw_ring_push(r, slot, data, &len, 1, aux, timeout, how, &pushed, &seq);
    return rc == TMW_OK ? (int64_t)seq : rc;
}

/* ---- pop ---------------------------------------------------------------- */

int tmw_ring_pop(tmw_ring *r, int slot, tmw_pop_buf *b, size_t max, int hold,
                 double timeout) {
    b->n = 0;
    b->first_seq = 0;
    b->first_len = 0;
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    if (max == 0 || !b->lens || !b->auxs || (b->out_cap && !b->out)) return TMW_EINVAL;
    char *out = b->out;
    size_t out_cap = b->out_cap;
    uint32_t *lens = b->lens, *auxs = b->auxs;
    uint64_t *stamps = b->stamps;
    slot_hdr *s = slot_at(r, slot);
    uint64_t deadline = deadline_of(timeout);
    uint64_t max_record = tmw_ring_max_record(r);
    int waited = 0;
    int lingered = b->linger_ns == 0;
    for (;;) {
        if (hold && LOAD(&s->held_count) >= r->max_held) return TMW_EHELDFULL;
        if (!ring_nonempty(r)) { /* checked without the lock: no locking to find nothing */
            if (timeout == 0) return TMW_EAGAIN;
            if (!waited++) BUMP(&r->h->pop_waits);
            if (!lingered) { /* once per call, before any sleep */
                lingered = 1;
                int rc = linger(r, s, b->linger_ns, deadline);
                if (rc == TMW_EINTR) return rc;
                if (rc == TMW_OK) continue; /* it lingered: look again */
            }
            uint64_t spin = b->spin_ns > r->spin_ns ? b->spin_ns : r->spin_ns;
            int rc = wait_for(r, data_ready, 0, data_side(r), &s->sleeping_data, spin, deadline);
            if (rc == TMW_ETIMEDOUT && ring_nonempty(r)) continue;
            if (rc) return rc;
            continue;
        }
        ring_state st;
        int rc = lock_state(r, &st);
        if (rc) return rc;
        uint32_t held = s->held_count;
        if (held > r->max_held) {
            unlock(r);
            return TMW_ECORRUPT;
        }
        size_t limit = max;
        if (hold && limit > r->max_held - held) limit = r->max_held - held;
        size_t n = 0;
        uint64_t used_out = 0;
        b->first_seq = st.head_seq;
        while (n < limit && st.head != st.tail) {
            rec_hdr rh;
            get_bytes(r, st.head, (char *)&rh, REC_HDR);
            uint64_t span = span_of(rh.len);
            if (rh.len > max_record || span > st.tail - st.head || rh.seq != st.head_seq) {
                rc = TMW_ECORRUPT;
                break;
            }
            int alone = (rh.aux & b->alone_mask) != 0;
            if (alone && n > 0) break; /* it starts the next pop's batch */
            if (used_out + rh.len > out_cap) {
                if (n == 0) {
                    b->first_len = rh.len;
                    rc = TMW_EBUFSMALL;
                }
                break;
            }
            get_bytes(r, st.head + REC_HDR, out + used_out, rh.len);
            used_out += rh.len;
            lens[n] = rh.len;
            auxs[n] = rh.aux;
            if (stamps) stamps[n] = rh.stamp;
            if (hold) {
                s->held[held + n].seq = rh.seq;
                s->held[held + n].aux = rh.aux;
            }
            st.head += span;
            st.head_seq++;
            n++;
            if (alone) break;
        }
        if (rc == TMW_OK && n > 0) commit(r, &st, hold ? slot : -1, held + (uint32_t)(hold ? n : 0));
        int left = st.head != st.tail;
        unlock(r);
        if (rc) return rc;
        if (n > 0) {
            b->n = n;
            wake(r, space_side(r));
            /* Records left: pass the wake-up on to another sleeping consumer
             * (the push woke one sleeper), as push does for producers. */
            if (left) wake_consumers(r);
            return TMW_OK;
        }
        /* Another consumer took them between our check and our lock. */
    }
}

/* ---- marking a queued record --------------------------------------------- */

int tmw_ring_mark(tmw_ring *r, uint64_t seq, uint32_t bits) {
    ring_state st;
    int rc = lock_state(r, &st);
    if (rc) return rc;
    if (seq < st.head_seq || seq >= st.next_seq) rc = TMW_EAGAIN;
    uint64_t pos = st.head, at = st.head_seq, max_record = tmw_ring_max_record(r);
    while (!rc) {
        rec_hdr rh;
        get_bytes(r, pos, (char *)&rh, REC_HDR);
        uint64_t span = span_of(rh.len);
        if (rh.len > max_record || span > st.tail - pos || rh.seq != at) {
            rc = TMW_ECORRUPT;
            break;
        }
        if (at == seq) {
            /* One aligned 4-byte store: a death here leaves it done or not. */
            rh.aux |= bits;
            memcpy(r->data + pos % r->capacity + offsetof(rec_hdr, aux), &rh.aux, sizeof rh.aux);
            break;
        }
        pos += span;
        at++;
    }
    unlock(r);
    return rc;
}

/* ---- peeking at queued records --------------------------------------------- */

#define PEEK_CHUNK 512 /* records a peek walks per hold of the lock */

int tmw_ring_peek(tmw_ring *r, uint64_t from, tmw_peeked *recs, size_t max, char *out, size_t cap,
                  size_t *n) {
    *n = 0;
    if (max && !recs) return TMW_EINVAL;
    if (max && cap && !out) return TMW_EINVAL;
    uint64_t pos = 0, at = 0, max_record = tmw_ring_max_record(r);
    size_t got = 0;
    int rc = TMW_OK, started = 0;
    /* Walk from the oldest record, PEEK_CHUNK at a time, letting go of the
     * lock between chunks so that a walk deep into a long queue does not
     * hold producers and consumers up. Between two chunks nothing moves
     * the records still queued; if pops took the one the walk stopped at,
     * it goes on from the new oldest. */
    while (got < max) {
        ring_state st;
        rc = lock_state(r, &st);
        if (rc) return rc;
        if (!started || at < st.head_seq || at > st.next_seq) {
            pos = st.head;
            at = st.head_seq;
            started = 1;
        }
        for (unsigned steps = 0; got < max && pos != st.tail && steps < PEEK_CHUNK; steps++) {
            rec_hdr rh;
            get_bytes(r, pos, (char *)&rh, REC_HDR);
            uint64_t span = span_of(rh.len);
            if (rh.len > max_record || span > st.tail - pos || rh.seq != at) {
                rc = TMW_ECORRUPT;
                break;
            }
            if (at >= from) {
                recs[got].seq = rh.seq;
                recs[got].stamp_ns = rh.stamp;
                recs[got].len = rh.len;
                recs[got].aux = rh.aux;
                if (cap) get_bytes(r, pos + REC_HDR, out + got * cap, rh.len < cap ? rh.len : cap);
                got++;
            }
            pos += span;
            at++;
        }
        int end = pos == st.tail;
        unlock(r);
        if (rc) return rc;
        if (end) break;
    }
    *n = got;
    return TMW_OK;
}

/* ---- held records ------------------------------------------------------- */

/* Drop tombstones (seq 0) from a slot's list; a death mid-way only leaves
 * duplicates of live entries past the new end, which count still covers. */
static void compact(slot_hdr *s, uint32_t count) {
    uint32_t w = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (s->held[i].seq == 0) continue;
        if (w != i) s->held[w] = s->held[i];
        w++;
    }
    STORE(&s->held_count, w);
}

int tmw_ring_release(tmw_ring *r, int slot, const uint64_t *seqs, size_t n) {
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    if (n && !seqs) return TMW_EINVAL;
    slot_hdr *s = slot_at(r, slot);
    int rc = lock(r);
    if (rc) return rc;
    uint32_t count = s->held_count;
    if (count > r->max_held) {
        unlock(r);
        return TMW_ECORRUPT;
    }
    if (!seqs) {
        STORE(&s->held_count, 0);
    } else {
        for (uint32_t i = 0; i < count; i++) {
            uint64_t seq = s->held[i].seq;
            for (size_t k = 0; k < n; k++) {
                if (seqs[k] == seq) {
                    STORE(&s->held[i].seq, 0);
                    break;
                }
            }
        }
        compact(s, count);
    }
    unlock(r);
    return TMW_OK;
}

/* Copy the live, distinct entries of a slot; returns how many there are. */
static size_t copy_held(tmw_ring *r, slot_hdr *s, tmw_held *out, size_t cap, size_t at) {
    uint32_t count = s->held_count;
    size_t n = at;
    for (uint32_t i = 0; i < count && i < r->max_held; i++) {
        tmw_held e = s->held[i];
        if (e.seq == 0) continue;
        int dup = 0;
        for (uint32_t k = 0; k < i; k++)
            if (s->held[k].seq == e.seq) dup = 1;
        if (dup) continue;
        if (n < cap) {
            out[n] = e;
            out[n]._pad = 0;
        }
        n++;
    }
    return n;
}

int tmw_ring_held(tmw_ring *r, int slot, tmw_held *out, size_t cap, size_t *n) {
    *n = 0;
    if (slot < 0 || (uint32_t)slot >= r->nslots) return TMW_ENOSLOT;
    int rc = lock(r);
    if (rc) return rc;
    slot_hdr *s = slot_at(r, slot);
    if (s->held_count > r->max_held) rc = TMW_ECORRUPT;
    else *n = copy_held(r, s, out, cap, 0);
    unlock(r);
    return rc;
}

static size_t release_slots_of(tmw_ring *r, int32_t pid, tmw_held *out, size_t cap) {
    size_t total = 0;
    for (uint32_t i = 0; i < r->nslots; i++) {
        slot_hdr *s = slot_at(r, (int)i);
        if (LOAD(&s->pid) == pid) total = copy_held(r, s, out, cap, total);
    }
    if (total > cap) return total; /* the caller's buffer is too small: free nothing */
    for (uint32_t i = 0; i < r->nslots; i++) {
        slot_hdr *s = slot_at(r, (int)i);
        if (LOAD(&s->pid) != pid) continue;
        /* Undo the dead process's share of the waiter counts, and clear
         * any wake-up flag it may have left set. */
        uint32_t d = __atomic_exchange_n(&s->sleeping_data, 0, __ATOMIC_SEQ_CST);
        uint32_t sp = __atomic_exchange_n(&s->sleeping_space, 0, __ATOMIC_SEQ_CST);
        uint32_t a = __atomic_exchange_n(&s->armed, 0, __ATOMIC_SEQ_CST);
        if (__atomic_exchange_n(&s->lingering, 0, __ATOMIC_SEQ_CST)) STORE(&r->h->lingerer, 0);
        if (d) ADD(&r->h->data_waiters, -d);
        if (sp) ADD(&r->h->space_waiters, -sp);
        if (a) ADD(&r->h->arm_waiters, -a);
        STORE(&r->h->data_signalled, 0);
        STORE(&r->h->space_signalled, 0);
        STORE(&r->h->arm_signalled, 0);
        STORE(&s->held_count, 0);
        STORE(&s->pid, 0);
    }
    return total;
}

int tmw_ring_reclaim(tmw_ring *r, int32_t pid, tmw_held *out, size_t cap, size_t *n) {
    *n = 0;
    if (pid <= 0) return TMW_EINVAL;
    /* Taking the lock first finishes any commit the dead process left. */
    int rc = lock(r);
    if (rc) return rc;
    *n = release_slots_of(r, pid, out, cap);
    unlock(r);
    return TMW_OK;
}

uint64_t tmw_ring_records(tmw_ring *r) {
    uint64_t hs = LOAD(&r->h->st.head_seq), ns = LOAD(&r->h->st.next_seq);
    return ns >= hs ? ns - hs : 0;
}

void tmw_ring_get_stats(tmw_ring *r, tmw_ring_stats *out) {
    shared_hdr *h = r->h;
    memset(out, 0, sizeof *out);
    uint64_t head = LOAD(&h->st.head), tail = LOAD(&h->st.tail);
    uint64_t hs = LOAD(&h->st.head_seq), ns = LOAD(&h->st.next_seq);
    out->capacity = r->capacity;
    out->max_record = tmw_ring_max_record(r);
    out->used_bytes = tail >= head ? tail - head : 0;
    out->records = ns >= hs ? ns - hs : 0;
    out->pushed = ns - 1;
    out->popped = hs - 1;
    out->next_seq = ns;
    out->wakeups = LOAD(&h->wakeups);
    out->push_waits = LOAD(&h->push_waits);
    out->pop_waits = LOAD(&h->pop_waits);
    out->recoveries = LOAD(&h->recoveries);
    out->woken = LOAD(&h->woken);
    out->nslots = r->nslots;
    out->max_held = r->max_held;
    out->lingering = LOAD(&h->lingerer);
}
