/* uringloop C core: raw-syscall io_uring ring mechanics.
 *
 * This file knows nothing about Python objects or asyncio. It sets a ring up (probing
 * the best flags this kernel accepts), preps one SQE per operation, submits and waits
 * in one io_uring_enter, and copies completions into plain arrays for Python to read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "_uring.h"

/* Constants newer than the Linux 6.1 header this is built against. */
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)
#endif
#ifndef IORING_FEAT_REG_REG_RING
#define IORING_FEAT_REG_REG_RING (1U << 13)
#endif
#ifndef IORING_ENTER_REGISTERED_RING
#define IORING_ENTER_REGISTERED_RING (1U << 4)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

/* Aggregated batches (see ul_batch_open in _uring.h). */
#define UL_BATCH_TAG (1ULL << 63)
#define UL_BATCH_SLOTS 1024
/* How long a wait that asked for a whole batch's completions may hold back others. */
#define UL_BATCH_MIN_WAIT_US 20

struct ul_batch {
    uint64_t ud;           /* the user_data of the batch's own completions */
    int64_t bytes;         /* sum of the result CQEs' res >= 0 */
    int32_t err;           /* first res < 0 (in CQE order: chain order), 0 if none */
    uint32_t err_idx;      /* its index among the result CQEs */
    uint32_t sqes;         /* requests prepped = result CQEs expected */
    uint32_t results;      /* result CQEs seen */
    uint32_t notif_pending;/* notifications promised (F_MORE) and not yet seen */
    uint32_t notifs;       /* notifications seen */
    uint32_t copied;       /* of which reported IORING_NOTIF_USAGE_ZC_COPIED */
    uint8_t active, results_done, final;
    uint8_t pass_errors;   /* emit each failed result on its own (ul_batch_prep_sendmsg) */
};

#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

struct ul_ring {
    int fd;
    int enter_fd;          /* registered index when enter_flags has REGISTERED_RING */
    unsigned enter_flags;  /* extra flags for every enter */
    int reg_tried;         /* ring fd registration attempted (by the first entering thread) */
    pthread_t reg_thread;  /* registered ring fds are per thread: the one that registered */
    unsigned setup_flags;
    unsigned features;
    int forked;
    int disabled;          /* created with R_DISABLED; enabled by the first enter */
    /* submission queue */
    unsigned *sq_khead, *sq_ktail, *sq_kflags;
    unsigned sq_mask, sq_entries;
    struct io_uring_sqe *sqes;
    unsigned sqe_tail;     /* our tail: SQEs prepped */
    unsigned sqe_flushed;  /* tail value already published to the kernel */
    /* completion queue */
    unsigned *cq_khead, *cq_ktail;
    unsigned cq_mask, cq_entries;
    struct io_uring_cqe *cqes;
    /* mappings */
    void *sq_ptr, *cq_ptr;
    size_t sq_sz, cq_sz, sqes_sz;
    /* provided-buffer ring */
    struct io_uring_buf_ring *br;
    size_t br_sz;
    char *bufs;
    size_t bufs_sz;
    unsigned nbufs, bufsize, br_mask;
    unsigned short br_tail, bgid;
    unsigned short *recycle;
    unsigned nrecycle;
    unsigned nsupplied; /* buffers 0..nsupplied-1 are in use; the ring grows to nbufs */
    int starved;        /* a receive found the ring empty (-ENOBUFS) */
    /* aggregated batches */
    struct ul_batch *batches;
    unsigned *batch_free;
    unsigned nbatch_free;
    unsigned batch_expect;  /* CQEs still expected by all open batches */
    /* counters */
    uint64_t n_enter, n_submitted, n_cqe, n_overflow;
};

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                     void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

static const unsigned flag_chain[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_NO_SQARRAY | IORING_SETUP_R_DISABLED,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SUBMIT_ALL,
    0,
};

static void unmap_all(ul_ring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr)
        munmap(r->cq_ptr, r->cq_sz);
    if (r->sq_ptr && r->sq_ptr != MAP_FAILED)
        munmap(r->sq_ptr, r->sq_sz);
    r->sqes = NULL;
    r->sq_ptr = r->cq_ptr = NULL;
}

static int map_rings(ul_ring *r, struct io_uring_params *p)
{
    r->sq_sz = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    if (r->setup_flags & IORING_SETUP_NO_SQARRAY)
        r->sq_sz = p->sq_off.flags + sizeof(unsigned) * 4;
    r->cq_sz = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    if (p->features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_sz > r->sq_sz)
            r->sq_sz = r->cq_sz;
        r->cq_sz = r->sq_sz;
    }
    r->sq_ptr = mmap(NULL, r->sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED)
        return -errno;
    if (p->features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ptr = r->sq_ptr;
    } else {
        r->cq_ptr = mmap(NULL, r->cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         r->fd, IORING_OFF_CQ_RING);
        if (r->cq_ptr == MAP_FAILED)
            return -errno;
    }
    r->sqes_sz = p->sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        return -errno;
    char *sq = r->sq_ptr, *cq = r->cq_ptr;
    r->sq_khead = (unsigned *)(sq + p->sq_off.head);
    r->sq_ktail = (unsigned *)(sq + p->sq_off.tail);
    r->sq_kflags = (unsigned *)(sq + p->sq_off.flags);
    r->sq_mask = *(unsigned *)(sq + p->sq_off.ring_mask);
    r->sq_entries = p->sq_entries;
    if (!(r->setup_flags & IORING_SETUP_NO_SQARRAY)) {
        unsigned *array = (unsigned *)(sq + p->sq_off.array);
        for (unsigned i = 0; i < p->sq_entries; i++)
            array[i] = i; /* identity map: SQE slot i is array entry i */
    }
    r->cq_khead = (unsigned *)(cq + p->cq_off.head);
    r->cq_ktail = (unsigned *)(cq + p->cq_off.tail);
    r->cq_mask = *(unsigned *)(cq + p->cq_off.ring_mask);
    r->cq_entries = p->cq_entries;
    r->cqes = (struct io_uring_cqe *)(cq + p->cq_off.cqes);
    r->sqe_tail = r->sqe_flushed = *r->sq_ktail;
    return 0;
}

ul_ring *ul_ring_create(unsigned entries, unsigned cq_entries, int *err)
{
    int first_err = 0;
    ul_ring *r = calloc(1, sizeof(*r));
    if (!r) {
        *err = ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < sizeof(flag_chain) / sizeof(flag_chain[0]); i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = flag_chain[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = cq_entries;
        int fd = sys_setup(entries, &p);
        if (fd < 0) {
            int e = errno;
            if (e != EINVAL) { /* EPERM, ENOSYS, ENOMEM: no flag change will help */
                first_err = e;
                break;
            }
            if (!first_err)
                first_err = e;
            continue;
        }
        r->fd = fd;
        r->enter_fd = fd;
        r->setup_flags = p.flags;
        r->features = p.features;
        r->disabled = (p.flags & IORING_SETUP_R_DISABLED) != 0;
        int rc = map_rings(r, &p);
        if (rc < 0) {
            unmap_all(r);
            close(fd);
            first_err = -rc;
            break;
        }
        return r;
    }
    free(r);
    *err = first_err ? first_err : EINVAL;
    return NULL;
}

void ul_ring_destroy(ul_ring *r)
{
    if (!r)
        return;
    /* A registered ring fd holds a reference to the ring: without unregistering it the
     * ring (and every request in flight on it, with the sockets they hold) outlives
     * close() until the registering thread exits. Only that thread can unregister it. */
    if ((r->enter_flags & IORING_ENTER_REGISTERED_RING) && !r->forked &&
        pthread_equal(pthread_self(), r->reg_thread)) {
        struct io_uring_rsrc_update up = {.offset = (unsigned)r->enter_fd};
        sys_register(r->fd, IORING_UNREGISTER_RING_FDS, &up, 1);
    }
    unmap_all(r);
    if (r->br)
        munmap(r->br, r->br_sz);
    if (r->bufs)
        munmap(r->bufs, r->bufs_sz);
    free(r->recycle);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

int ul_ring_fd(ul_ring *r) { return r->fd; }
unsigned ul_ring_setup_flags(ul_ring *r) { return r->setup_flags; }
unsigned ul_ring_features(ul_ring *r) { return r->features; }
unsigned ul_ring_sq_entries(ul_ring *r) { return r->sq_entries; }
unsigned ul_ring_cq_entries(ul_ring *r) { return r->cq_entries; }
void ul_ring_mark_forked(ul_ring *r) { r->forked = 1; }

int ul_probe_ops(ul_ring *r, unsigned char *supported, int n)
{
    size_t sz = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *p = calloc(1, sz);
    if (!p)
        return -ENOMEM;
    int rc = sys_register(r->fd, IORING_REGISTER_PROBE, p, 256);
    if (rc < 0) {
        rc = -errno;
        free(p);
        return rc;
    }
    for (int i = 0; i < n; i++)
        supported[i] = 0;
    for (int i = 0; i < p->ops_len && i < 256; i++) {
        unsigned op = p->ops[i].op;
        if ((int)op < n && (p->ops[i].flags & IO_URING_OP_SUPPORTED))
            supported[op] = 1;
    }
    rc = p->last_op;
    free(p);
    return rc;
}

/* Hand buffers nsupplied .. nsupplied+n-1 to the kernel for the first time. */
static void supply_buffers(ul_ring *r, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        unsigned bid = r->nsupplied + i;
        struct io_uring_buf *b = &r->br->bufs[(unsigned short)(r->br_tail + i) & r->br_mask];
        b->addr = (uint64_t)(uintptr_t)(r->bufs + (size_t)bid * r->bufsize);
        b->len = r->bufsize;
        b->bid = (unsigned short)bid;
    }
    r->nsupplied += n;
    r->br_tail = (unsigned short)(r->br_tail + n);
    store_release(&r->br->tail, r->br_tail);
}

int ul_pbuf_init(ul_ring *r, unsigned short bgid, unsigned nbufs, unsigned bufsize,
                 unsigned initial)
{
    if (r->br || nbufs == 0 || (nbufs & (nbufs - 1)) || nbufs > 32768 || initial == 0 ||
        initial > nbufs)
        return -EINVAL;
    long page = sysconf(_SC_PAGESIZE);
    r->br_sz = ((nbufs * sizeof(struct io_uring_buf)) + page - 1) & ~(size_t)(page - 1);
    r->br = mmap(NULL, r->br_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->br == MAP_FAILED) {
        r->br = NULL;
        return -errno;
    }
    r->bufs_sz = (size_t)nbufs * bufsize;
    /* Address space for all nbufs; pages are only touched once a buffer is in use. */
    r->bufs = mmap(NULL, r->bufs_sz, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->bufs == MAP_FAILED) {
        r->bufs = NULL;
        return -errno;
    }
    r->recycle = calloc(nbufs, sizeof(unsigned short));
    if (!r->recycle)
        return -ENOMEM;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)r->br;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        return -errno;
    r->nbufs = nbufs;
    r->bufsize = bufsize;
    r->br_mask = nbufs - 1;
    r->bgid = bgid;
    r->nsupplied = 0;
    supply_buffers(r, initial);
    return 0;
}

void *ul_pbuf_base(ul_ring *r) { return r->bufs; }
unsigned ul_pbuf_supplied(ul_ring *r) { return r->nsupplied; }

int ul_register_buffers(ul_ring *r, void **addrs, size_t *lens, unsigned n)
{
    struct iovec *iov = calloc(n ? n : 1, sizeof(*iov));
    if (!iov)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        iov[i].iov_base = addrs[i];
        iov[i].iov_len = lens[i];
    }
    int rc = sys_register(r->fd, IORING_REGISTER_BUFFERS, iov, n);
    if (rc < 0)
        rc = -errno;
    free(iov);
    return rc;
}

int ul_unregister_buffers(ul_ring *r)
{
    return sys_register(r->fd, IORING_UNREGISTER_BUFFERS, NULL, 0) < 0 ? -errno : 0;
}

/* ---- submission ---- */

static int enable_if_needed(ul_ring *r)
{
    if (!r->disabled)
        return 0;
    if (sys_register(r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
        return -errno;
    r->disabled = 0;
    return 0;
}

static int flush_submit(ul_ring *r, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    if (r->forked)
        return -EBADFD;
    int rc = enable_if_needed(r);
    if (rc < 0)
        return rc;
    if (!r->reg_tried) {
        /* Register the ring fd itself (saves an fd lookup on every enter). Registered
         * ring fds are per thread, so register from the thread that runs the ring. */
        r->reg_tried = 1;
        struct io_uring_rsrc_update up = {.offset = (unsigned)-1, .data = (uint64_t)r->fd};
        if (sys_register(r->fd, IORING_REGISTER_RING_FDS, &up, 1) == 1) {
            r->enter_fd = (int)up.offset;
            r->enter_flags = IORING_ENTER_REGISTERED_RING;
            r->reg_thread = pthread_self();
        }
    }
    int efd = r->fd;
    unsigned eflags = flags;
    if ((r->enter_flags & IORING_ENTER_REGISTERED_RING) &&
        pthread_equal(pthread_self(), r->reg_thread)) {
        efd = r->enter_fd;
        eflags |= r->enter_flags;
    }
    unsigned to_submit = r->sqe_tail - r->sqe_flushed;
    store_release(r->sq_ktail, r->sqe_tail);
    r->n_enter++;
    int ret = sys_enter(efd, to_submit, min_complete, eflags, arg, argsz);
    if (ret < 0)
        return -errno;
    r->sqe_flushed += (unsigned)ret;
    r->n_submitted += (unsigned)ret;
    return ret;
}

static struct io_uring_sqe *get_sqe(ul_ring *r)
{
    if (r->forked) /* the SQE array is shared with the parent: never write to it */
        return NULL;
    unsigned head = load_acquire(r->sq_khead);
    if (r->sqe_tail - head >= r->sq_entries) {
        /* SQ full: hand the batch to the kernel (no waiting) and retry once. */
        flush_submit(r, 0, 0, NULL, 0);
        head = load_acquire(r->sq_khead);
        if (r->sqe_tail - head >= r->sq_entries)
            return NULL;
    }
    struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    r->sqe_tail++;
    return sqe;
}

#define GET_SQE(r, sqe)                  \
    struct io_uring_sqe *sqe = get_sqe(r); \
    if (!sqe)                              \
        return (r)->forked ? -EBADFD : -EBUSY;

int ul_prep_nop(ul_ring *r, uint64_t ud)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_accept(ul_ring *r, int fd, uint64_t ud, int multishot, void *addr, void *addrlen)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->addr2 = (uint64_t)(uintptr_t)addrlen;
    sqe->accept_flags = SOCK_CLOEXEC | SOCK_NONBLOCK;
    if (multishot)
        sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_connect(ul_ring *r, int fd, uint64_t ud, const void *addr, unsigned addrlen)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_CONNECT;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->off = addrlen;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_recv(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, int msg_flags)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->msg_flags = (unsigned)msg_flags;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_recv_multishot(ul_ring *r, int fd, uint64_t ud, unsigned short bgid)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_send(ul_ring *r, int fd, uint64_t ud, const char *buf, unsigned len, int msg_flags)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->msg_flags = (unsigned)msg_flags | MSG_NOSIGNAL;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_send_zc(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len,
                    int msg_flags, unsigned zc_flags, unsigned buf_index)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SEND_ZC;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->msg_flags = (unsigned)msg_flags;
    sqe->ioprio = (unsigned short)zc_flags;
    sqe->buf_index = (unsigned short)buf_index;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_sendmsg(ul_ring *r, int fd, uint64_t ud, const void *msghdr, int msg_flags, int zc,
                    unsigned zc_flags)
{
    GET_SQE(r, sqe);
    sqe->opcode = zc ? IORING_OP_SENDMSG_ZC : IORING_OP_SENDMSG;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)msghdr;
    sqe->len = 1;
    sqe->msg_flags = (unsigned)msg_flags | MSG_NOSIGNAL;
    if (zc)
        sqe->ioprio = (unsigned short)zc_flags;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_recvmsg(ul_ring *r, int fd, uint64_t ud, void *msghdr, int msg_flags)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_RECVMSG;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)msghdr;
    sqe->len = 1;
    sqe->msg_flags = (unsigned)msg_flags;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_read(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, uint64_t off)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_READ;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->off = off;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_write(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len, uint64_t off)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_WRITE;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->off = off;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_shutdown(ul_ring *r, int fd, uint64_t ud, int how)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SHUTDOWN;
    sqe->fd = fd;
    sqe->len = (unsigned)how;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_cancel(ul_ring *r, uint64_t target, uint64_t ud)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_cancel_fd(ul_ring *r, int fd, uint64_t ud)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = fd;
    sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_poll(ul_ring *r, int fd, uint64_t ud, unsigned events, int multishot)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = fd;
    sqe->poll32_events = events;
    if (multishot)
        sqe->len = IORING_POLL_ADD_MULTI;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_poll_remove(ul_ring *r, uint64_t target, uint64_t ud)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_POLL_REMOVE;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_splice(ul_ring *r, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
                   unsigned len, unsigned splice_flags, uint64_t ud, int link)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SPLICE;
    sqe->fd = fd_out;
    sqe->off = (uint64_t)off_out;
    sqe->splice_fd_in = fd_in;
    sqe->splice_off_in = (uint64_t)off_in;
    sqe->len = len;
    sqe->splice_flags = splice_flags;
    if (link)
        sqe->flags = IOSQE_IO_LINK;
    sqe->user_data = ud;
    return 0;
}

int ul_submit(ul_ring *r)
{
    if (r->forked)
        return -EBADFD;
    if (r->sqe_tail == r->sqe_flushed)
        return 0;
    return flush_submit(r, 0, 0, NULL, 0);
}

/* ---- completion ---- */

static void recycle_buffers(ul_ring *r)
{
    /* Receives ran dry since the last call: double the buffers in use (up to nbufs).
     * Few buffers keep the data the kernel writes in cache; enough of them keep a
     * busy server out of ENOBUFS, where every multishot receive ends and re-arms. */
    if (r->starved) {
        r->starved = 0;
        unsigned room = r->nbufs - r->nsupplied;
        if (room)
            supply_buffers(r, r->nsupplied < room ? r->nsupplied : room);
    }
    if (!r->nrecycle)
        return;
    unsigned short tail = r->br_tail;
    for (unsigned i = 0; i < r->nrecycle; i++) {
        unsigned short bid = r->recycle[i];
        struct io_uring_buf *b = &r->br->bufs[(unsigned short)(tail + i) & r->br_mask];
        b->addr = (uint64_t)(uintptr_t)(r->bufs + (size_t)bid * r->bufsize);
        b->len = r->bufsize;
        b->bid = bid;
    }
    r->br_tail = (unsigned short)(tail + r->nrecycle);
    r->nrecycle = 0;
    store_release(&r->br->tail, r->br_tail);
}

static unsigned cq_ready(ul_ring *r)
{
    return load_acquire(r->cq_ktail) - *r->cq_khead;
}

/* One CQE of an aggregated batch: account it; emit the batch's own completion into
   ud/res/flags[*n] when its results are all in (F_MORE: notifications still due) and
   when its last CQE arrived (no F_MORE). At most one emission per CQE. */
static void batch_cqe(ul_ring *r, const struct io_uring_cqe *cqe, uint64_t *ud, int32_t *res,
                      uint64_t *flags, unsigned *n)
{
    unsigned slot = (unsigned)(cqe->user_data & 0xffffffffu);
    if (!r->batches || slot >= UL_BATCH_SLOTS)
        return;
    struct ul_batch *b = &r->batches[slot];
    if (!b->active || b->final)
        return;
    if (r->batch_expect)
        r->batch_expect--;
    if (cqe->flags & IORING_CQE_F_NOTIF) {
        if (b->notif_pending)
            b->notif_pending--;
        b->notifs++;
        if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
            b->copied++;
    } else {
        if (cqe->res >= 0) {
            b->bytes += cqe->res;
        } else {
            if (!b->err) {
                b->err = cqe->res;
                b->err_idx = b->results;
            }
            if (b->pass_errors) {
                /* each failed result on its own, in chain order; the last one is also
                   the batch's completion (no F_MORE) */
                b->results++;
                ud[*n] = b->ud;
                res[*n] = cqe->res;
                if (b->results < b->sqes) {
                    flags[*n] = UL_BATCH_F_ERROR | IORING_CQE_F_MORE;
                } else {
                    b->final = 1;
                    b->results_done = 1;
                    flags[*n] = UL_BATCH_F_ERROR;
                }
                (*n)++;
                return;
            }
        }
        b->results++;
        if (cqe->flags & IORING_CQE_F_MORE) {
            b->notif_pending++;
            r->batch_expect++;
        }
    }
    if (b->results < b->sqes)
        return;
    int32_t v = b->err ? b->err : (int32_t)(b->bytes > INT32_MAX ? INT32_MAX : b->bytes);
    if (b->pass_errors)
        v = (int32_t)(b->bytes > INT32_MAX ? INT32_MAX : b->bytes); /* errors went out */
    if (!b->notif_pending) {
        b->final = 1;
        b->results_done = 1;
        ud[*n] = b->ud;
        res[*n] = v;
        flags[*n] = 0;
        (*n)++;
    } else if (!b->results_done) {
        b->results_done = 1;
        ud[*n] = b->ud;
        res[*n] = v;
        flags[*n] = IORING_CQE_F_MORE;
        (*n)++;
    }
}

int ul_run(ul_ring *r, unsigned wait_nr, int64_t timeout_ns,
           uint64_t *ud, int32_t *res, uint64_t *flags, unsigned max)
{
    if (r->forked)
        return -EBADFD;
    recycle_buffers(r);
    unsigned n = 0;
again:;
    unsigned ready = cq_ready(r);
    unsigned want = ready ? 0 : wait_nr;
    unsigned sqflags = load_acquire(r->sq_kflags);
    int need_enter = (r->sqe_tail != r->sqe_flushed) || want ||
                     (sqflags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) || r->disabled;
    if (need_enter) {
        unsigned eflags = IORING_ENTER_GETEVENTS;
        struct io_uring_getevents_arg arg;
        struct __kernel_timespec ts;
        void *argp = NULL;
        size_t argsz = 0;
        unsigned min_complete = want;
        memset(&arg, 0, sizeof(arg));
        if (want && timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000LL;
            ts.tv_nsec = timeout_ns % 1000000000LL;
            arg.ts = (uint64_t)(uintptr_t)&ts;
        }
        /* Batches in flight: under DEFER_TASKRUN the kernel runs deferred work (the
         * next link of a chain, a notification) only until min_complete events are
         * reached, so a hard-linked chain would advance one request per enter. Ask for
         * the batches' outstanding CQEs: with nothing to wait for, with a zero timeout
         * (returns at once); when waiting, with a short minimum wait after which any
         * completion ends the wait (IORING_FEAT_MIN_TIMEOUT, 6.12). */
        if (r->batch_expect > min_complete && (r->features & IORING_FEAT_EXT_ARG) &&
            (r->setup_flags & IORING_SETUP_DEFER_TASKRUN)) {
            unsigned boost = r->batch_expect < r->cq_entries / 2 ? r->batch_expect
                                                                  : r->cq_entries / 2;
            if (!want) {
                ts.tv_sec = 0;
                ts.tv_nsec = 0;
                arg.ts = (uint64_t)(uintptr_t)&ts;
                min_complete = boost;
            } else if (r->features & IORING_FEAT_MIN_TIMEOUT) {
                arg.pad = UL_BATCH_MIN_WAIT_US; /* min_wait_usec since 6.12 */
                min_complete = boost;
            }
        }
        if (arg.ts || arg.pad) {
            if (r->features & IORING_FEAT_EXT_ARG) {
                argp = &arg;
                argsz = sizeof(arg);
                eflags |= IORING_ENTER_EXT_ARG;
            } else {
                min_complete = want;
            }
        }
        if (sqflags & IORING_SQ_CQ_OVERFLOW)
            r->n_overflow++;
        int ret = flush_submit(r, min_complete, eflags, argp, argsz);
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
            return n ? (int)n : ret;
        if (ret == -EINTR)
            wait_nr = 0; /* a signal: return to Python so its handler runs */
    }
    unsigned head = *r->cq_khead;
    unsigned tail = load_acquire(r->cq_ktail);
    unsigned seen = 0;
    while (head != tail && n < max) {
        struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
        head++;
        seen++;
        if (cqe->user_data & UL_BATCH_TAG) {
            batch_cqe(r, cqe, ud, res, flags, &n);
            continue;
        }
        ud[n] = cqe->user_data;
        res[n] = cqe->res;
        flags[n] = cqe->flags;
        if ((cqe->flags & IORING_CQE_F_BUFFER) && r->nbufs) {
            /* the data's offset in the buffer area, for Python; the buffer goes back to
             * the kernel at the next ul_run, once Python has read it */
            unsigned bid = (cqe->flags >> IORING_CQE_BUFFER_SHIFT) & r->br_mask;
            flags[n] |= (uint64_t)((size_t)bid * r->bufsize) << 32;
            if (r->nrecycle < r->nbufs)
                r->recycle[r->nrecycle++] = (unsigned short)bid;
        } else if (cqe->res == -ENOBUFS && r->nbufs) {
            r->starved = 1;
        }
        n++;
    }
    store_release(r->cq_khead, head);
    r->n_cqe += seen;
    /* Only batch-internal CQEs and the caller waits without a time limit: wait again
     * rather than wake Python for nothing. */
    if (!n && seen && wait_nr && timeout_ns < 0)
        goto again;
    return (int)n;
}

void ul_counters(ul_ring *r, uint64_t *out)
{
    out[0] = r->n_enter;
    out[1] = r->n_submitted;
    out[2] = r->n_cqe;
    out[3] = r->n_overflow;
}

/* ---- datagram helpers ---- */

struct ul_dgram {
    struct msghdr msg;
    struct iovec iov;
    struct sockaddr_storage name;
};

size_t ul_dgram_size(void) { return sizeof(struct ul_dgram); }

void ul_dgram_set_send(ul_dgram *d, const void *buf, size_t len, const void *name,
                       unsigned namelen)
{
    memset(&d->msg, 0, sizeof(d->msg));
    d->iov.iov_base = (void *)buf;
    d->iov.iov_len = len;
    d->msg.msg_iov = &d->iov;
    d->msg.msg_iovlen = 1;
    if (name && namelen) {
        if (namelen > sizeof(d->name))
            namelen = sizeof(d->name);
        memcpy(&d->name, name, namelen);
        d->msg.msg_name = &d->name;
        d->msg.msg_namelen = namelen;
    }
}

void ul_dgram_set_recv(ul_dgram *d, void *buf, size_t len)
{
    memset(&d->msg, 0, sizeof(d->msg));
    memset(&d->name, 0, sizeof(d->name));
    d->iov.iov_base = buf;
    d->iov.iov_len = len;
    d->msg.msg_iov = &d->iov;
    d->msg.msg_iovlen = 1;
    d->msg.msg_name = &d->name;
    d->msg.msg_namelen = sizeof(d->name);
}

unsigned ul_dgram_namelen(const ul_dgram *d) { return d->msg.msg_namelen; }
const void *ul_dgram_name(const ul_dgram *d) { return &d->name; }
int ul_dgram_flags(const ul_dgram *d) { return d->msg.msg_flags; }

int ul_dgram_prep_sendmsg(ul_ring *r, int fd, uint64_t ud, ul_dgram *d, int hardlink)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SENDMSG;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)&d->msg;
    sqe->len = 1;
    sqe->msg_flags = MSG_NOSIGNAL;
    if (hardlink)
        sqe->flags = IOSQE_IO_HARDLINK;
    sqe->user_data = ud;
    return 0;
}

int ul_dgram_prep_recvmsg(ul_ring *r, int fd, uint64_t ud, ul_dgram *d)
{
    return ul_prep_recvmsg(r, fd, ud, &d->msg, 0);
}

/* ---- gathered stream sends ---- */

struct ul_sendv {
    struct msghdr msg;
    struct iovec iov[];
};

size_t ul_sendv_size(unsigned cap) { return sizeof(struct ul_sendv) + cap * sizeof(struct iovec); }

void ul_sendv_set(ul_sendv *v, unsigned i, const char *buf, size_t len)
{
    v->iov[i].iov_base = (void *)buf;
    v->iov[i].iov_len = len;
}

int ul_prep_sendv(ul_ring *r, int fd, uint64_t ud, ul_sendv *v, unsigned n)
{
    memset(&v->msg, 0, sizeof(v->msg));
    v->msg.msg_iov = v->iov;
    v->msg.msg_iovlen = n;
    return ul_prep_sendmsg(r, fd, ud, &v->msg, 0, 0, 0);
}

/* ---- zero-copy helpers ---- */
/* Registered-buffer table for zero-copy pools: one sparse table of `nr` slots
   (IORING_REGISTER_BUFFERS2, 5.19 for SPARSE), filled and emptied slot by slot with
   IORING_REGISTER_BUFFERS_UPDATE, so pools can grow without re-registering the rest. */
#ifndef IORING_RSRC_REGISTER_SPARSE
#define IORING_RSRC_REGISTER_SPARSE (1U << 0)
#endif

int ul_zc_table_init(ul_ring *r, unsigned nr)
{
    struct io_uring_rsrc_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.nr = nr;
    reg.flags = IORING_RSRC_REGISTER_SPARSE;
    int rc = sys_register(r->fd, IORING_REGISTER_BUFFERS2, &reg, sizeof(reg));
    return rc < 0 ? -errno : 0;
}

int ul_zc_table_set(ul_ring *r, unsigned slot, void *addr, size_t len)
{
    struct iovec iov = { .iov_base = addr, .iov_len = len };
    struct io_uring_rsrc_update2 up;
    memset(&up, 0, sizeof(up));
    up.offset = slot;
    up.data = (uint64_t)(uintptr_t)&iov;
    up.nr = 1;
    int rc = sys_register(r->fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
    return rc < 0 ? -errno : rc;
}

void *ul_zc_mmap(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int ul_zc_munmap(void *p, size_t len) { return munmap(p, len) < 0 ? -errno : 0; }

int ul_prep_sendto_zc(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len,
                      const void *addr, unsigned addrlen, unsigned zc_flags, unsigned buf_index,
                      int hardlink)
{
    GET_SQE(r, sqe);
    sqe->opcode = IORING_OP_SEND_ZC;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->ioprio = (unsigned short)zc_flags;
    sqe->buf_index = (unsigned short)buf_index;
    if (addr && addrlen) {
        sqe->addr2 = (uint64_t)(uintptr_t)addr;
        sqe->addr_len = (unsigned short)addrlen;
    }
    if (hardlink)
        sqe->flags = IOSQE_IO_HARDLINK;
    sqe->user_data = ud;
    return 0;
}

int ul_prep_read_fixed(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, uint64_t off,
                       int buf_index)
{
    GET_SQE(r, sqe);
    sqe->opcode = buf_index >= 0 ? IORING_OP_READ_FIXED : IORING_OP_READ;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->off = off;
    if (buf_index >= 0)
        sqe->buf_index = (unsigned short)buf_index;
    sqe->user_data = ud;
    return 0;
}


/* ---- aggregated batches ---- */

int ul_batch_open(ul_ring *r, uint64_t ud)
{
    if (!r->batches) {
        r->batches = calloc(UL_BATCH_SLOTS, sizeof(*r->batches));
        r->batch_free = malloc(UL_BATCH_SLOTS * sizeof(*r->batch_free));
        if (!r->batches || !r->batch_free) {
            free(r->batches);
            free(r->batch_free);
            r->batches = NULL;
            r->batch_free = NULL;
            return -ENOMEM;
        }
        for (unsigned i = 0; i < UL_BATCH_SLOTS; i++)
            r->batch_free[i] = UL_BATCH_SLOTS - 1 - i;
        r->nbatch_free = UL_BATCH_SLOTS;
    }
    if (!r->nbatch_free)
        return -EBUSY;
    unsigned slot = r->batch_free[--r->nbatch_free];
    struct ul_batch *b = &r->batches[slot];
    memset(b, 0, sizeof(*b));
    b->ud = ud;
    b->active = 1;
    return (int)slot;
}

void ul_batch_close(ul_ring *r, int slot, int64_t *out)
{
    if (!r->batches || slot < 0 || slot >= UL_BATCH_SLOTS || !r->batches[slot].active)
        return;
    struct ul_batch *b = &r->batches[slot];
    if (out) {
        out[0] = b->bytes;
        out[1] = b->err;
        out[2] = b->err_idx;
        out[3] = b->results;
        out[4] = b->notifs;
        out[5] = b->copied;
    }
    if (!b->final) { /* closed early (ring going away): forget what it still expected */
        unsigned left = b->sqes - b->results + b->notif_pending;
        r->batch_expect = left < r->batch_expect ? r->batch_expect - left : 0;
    }
    b->active = 0;
    r->batch_free[r->nbatch_free++] = (unsigned)slot;
}

/* Checks a batch prep of n SQEs for `slot` and makes room for all of them (all or
   nothing: never leave half a chain queued). 1: go ahead, the n SQEs are already
   counted to the batch, so the caller writes all of them; 0: nothing to do (n == 0);
   < 0: -errno. */
static int batch_reserve(ul_ring *r, int slot, unsigned n)
{
    if (r->forked)
        return -EBADFD;
    if (!r->batches || slot < 0 || slot >= UL_BATCH_SLOTS || !r->batches[slot].active ||
        r->batches[slot].results_done)
        return -EINVAL;
    if (!n)
        return 0;
    if (n > r->sq_entries)
        return -EINVAL;
    if (r->sqe_tail - load_acquire(r->sq_khead) + n > r->sq_entries) {
        flush_submit(r, 0, 0, NULL, 0);
        if (r->sqe_tail - load_acquire(r->sq_khead) + n > r->sq_entries)
            return -EBUSY;
    }
    r->batches[slot].sqes += n; /* the caller writes all n now: nothing fails after this */
    r->batch_expect += n;
    return 1;
}

/* The next SQE of a batch chain: zeroed, opcode/fd/user_data set, hard-linked to the
   next one unless it is the last of an unlinked chain or link_last says otherwise. */
static struct io_uring_sqe *batch_sqe(ul_ring *r, int op, int fd, uint64_t tag,
                                      unsigned i, unsigned n, int link_last)
{
    struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    r->sqe_tail++;
    sqe->opcode = (unsigned char)op;
    sqe->fd = fd;
    sqe->user_data = tag;
    if (link_last != UL_BATCH_UNLINKED && (i + 1 < n || link_last))
        sqe->flags = IOSQE_IO_HARDLINK;
    return sqe;
}

int ul_batch_prep_sendzc(ul_ring *r, int slot, int fd, const uint64_t *addrs,
                         const uint32_t *lens, const int32_t *buf_index, unsigned n,
                         unsigned len0, int bidx0, const void *addr, unsigned addrlen,
                         unsigned zc_flags, int link_last)
{
    int ok = batch_reserve(r, slot, n);
    if (ok <= 0)
        return ok;
    uint64_t tag = UL_BATCH_TAG | (unsigned)slot;
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = batch_sqe(r, IORING_OP_SEND_ZC, fd, tag, i, n, link_last);
        sqe->addr = addrs[i];
        sqe->len = lens ? lens[i] : len0;
        unsigned fl = zc_flags;
        int bi = buf_index ? buf_index[i] : bidx0;
        if (bi >= 0) {
            fl |= IORING_RECVSEND_FIXED_BUF;
            sqe->buf_index = (unsigned short)bi;
        }
        sqe->ioprio = (unsigned short)fl;
        if (addr && addrlen) {
            sqe->addr2 = (uint64_t)(uintptr_t)addr;
            sqe->addr_len = (unsigned short)addrlen;
        }
    }
    return 0;
}

int ul_batch_prep_sendmsg(ul_ring *r, int slot, int fd, ul_dgram *d, unsigned n, int link_last)
{
    int ok = batch_reserve(r, slot, n);
    if (ok <= 0)
        return ok;
    uint64_t tag = UL_BATCH_TAG | (unsigned)slot;
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = batch_sqe(r, IORING_OP_SENDMSG, fd, tag, i, n, link_last);
        sqe->addr = (uint64_t)(uintptr_t)&d[i].msg;
        sqe->len = 1;
        sqe->msg_flags = MSG_NOSIGNAL;
    }
    r->batches[slot].pass_errors = 1;
    return 0;
}

int64_t ul_sock_send_room(int fd)
{
    int sndbuf = 0, outq = 0;
    socklen_t len = sizeof(sndbuf);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0)
        return -errno;
    if (ioctl(fd, SIOCOUTQ, &outq) < 0)
        return -errno;
    int64_t room = (int64_t)sndbuf / 2 - outq;
    return room < 0 ? 0 : room;
}
