/*
 * udp_zc_ref.c - C reference sender for bench/zerocopy_udp_bench.py.
 *
 * Sends SIZE-byte UDP datagrams on a connected socket to HOST:PORT for
 * SECONDS and prints one JSON line.  Raw syscalls, no liburing.
 *
 * Usage:
 *   udp_zc_ref --mode M --host H --port P --size N --seconds S
 *              [--inflight K] [--link L] [--warmup W]
 *
 * Modes:
 *   send     plain send() in a loop (blocking socket): the copying syscall path.
 *   zc       IORING_OP_SEND_ZC from ordinary (unregistered) page-aligned buffers,
 *            K requests in flight; each slot is resubmitted once its
 *            notification (or its final CQE without F_MORE) has arrived.
 *   zcreg    the same with the buffers registered (IORING_REGISTER_BUFFERS) and
 *            IORING_RECVSEND_FIXED_BUF: no per-request page pinning.
 *   usend    IORING_OP_SEND (copying) with K requests in flight.
 *
 * --link L hard-links the requests in chains of L (as uringloop's datagram
 * transport does); default 1 = independent requests.
 *
 * Every zero-copy request sets IORING_SEND_ZC_REPORT_USAGE; the output counts
 * the notifications and how many reported IORING_NOTIF_USAGE_ZC_COPIED.
 * "cpu_s" is utime+stime of this process (getrusage) over the measured window,
 * which starts after WARMUP seconds (default 0.2).  The run is bounded: it
 * stops at warmup + seconds (plus an alarm() safety net) whatever happens.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Newer than the 6.1 uapi header we build against. */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif

#define RING_ENTRIES 1024
#define MAX_INFLIGHT 512

enum { M_SEND, M_ZC, M_ZCREG, M_USEND };

static int ring_fd;
static unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
static unsigned *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static unsigned sq_local_tail, to_submit;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int uring_enter(unsigned submit, unsigned wait, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, ring_fd, submit, wait, flags, NULL, 0);
}

static int setup_ring(unsigned flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = RING_ENTRIES * 4;
    int fd = (int)syscall(__NR_io_uring_setup, RING_ENTRIES, &p);
    if (fd < 0)
        return -1;
    ring_fd = fd;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        fprintf(stderr, "udp_zc_ref: kernel lacks IORING_FEAT_SINGLE_MMAP\n");
        exit(1);
    }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t sz = sq_sz > cq_sz ? sq_sz : cq_sz;
    unsigned char *q = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            fd, IORING_OFF_SQ_RING);
    if (q == MAP_FAILED) {
        perror("mmap sq");
        exit(1);
    }
    sq_head = (unsigned *)(q + p.sq_off.head);
    sq_tail = (unsigned *)(q + p.sq_off.tail);
    sq_mask = (unsigned *)(q + p.sq_off.ring_mask);
    sq_array = (unsigned *)(q + p.sq_off.array);
    cq_head = (unsigned *)(q + p.cq_off.head);
    cq_tail = (unsigned *)(q + p.cq_off.tail);
    cq_mask = (unsigned *)(q + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(q + p.cq_off.cqes);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        perror("mmap sqes");
        exit(1);
    }
    sq_local_tail = *sq_tail;
    return 0;
}

static struct io_uring_sqe *get_sqe(void)
{
    unsigned head = __atomic_load_n(sq_head, __ATOMIC_ACQUIRE);
    if (sq_local_tail - head >= RING_ENTRIES) {
        __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
        int r = uring_enter(to_submit, 0, 0);
        if (r > 0)
            to_submit -= (unsigned)r < to_submit ? (unsigned)r : to_submit;
    }
    unsigned idx = sq_local_tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sq_array[idx] = idx;
    sq_local_tail++;
    to_submit++;
    return sqe;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "udp_zc_ref: safety alarm, exiting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(3);
}

static void usage(void)
{
    fprintf(stderr, "usage: udp_zc_ref --mode send|zc|zcreg|usend --host H --port P "
                    "--size N --seconds S [--inflight K] [--link L] [--warmup W]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = NULL, *mode_s = "zcreg";
    int port = 9, inflight = 32, link = 1;
    size_t size = 65507;
    double seconds = 2.0, warmup = 0.2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--mode"))
            mode_s = argv[++i];
        else if (!strcmp(argv[i], "--host"))
            host = argv[++i];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size"))
            size = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--warmup"))
            warmup = atof(argv[++i]);
        else if (!strcmp(argv[i], "--inflight"))
            inflight = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--link"))
            link = atoi(argv[++i]);
        else
            usage();
    }
    int mode;
    if (!strcmp(mode_s, "send"))
        mode = M_SEND;
    else if (!strcmp(mode_s, "zc"))
        mode = M_ZC;
    else if (!strcmp(mode_s, "zcreg"))
        mode = M_ZCREG;
    else if (!strcmp(mode_s, "usend"))
        mode = M_USEND;
    else
        usage();
    if (!host || size < 1 || size > 65507 || seconds <= 0 || warmup < 0 || inflight < 1 ||
        inflight > MAX_INFLIGHT || link < 1 || link > inflight)
        usage();
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(warmup + seconds) + 10);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("udp_zc_ref: socket/connect");
        return 1;
    }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    /* One page-aligned buffer per slot (slot i uses registered buffer i). */
    size_t stride = (size + 4095) & ~(size_t)4095;
    int nbuf = mode == M_SEND ? 1 : inflight;
    unsigned char *mem = mmap(NULL, stride * (size_t)nbuf, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap buffers");
        return 1;
    }
    for (size_t i = 0; i < stride * (size_t)nbuf; i++)
        mem[i] = (unsigned char)('a' + i % 26);

    uint64_t dgrams = 0, bytes = 0, errors = 0, notifs = 0, copied = 0, enters = 0;
    int last_err = 0;
    uint64_t t_start = now_ns();
    uint64_t t_meas = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(seconds * 1e9);
    uint64_t m_dgrams = 0, m_bytes = 0;
    double c0 = 0.0, c1 = 0.0;
    uint64_t w0 = 0, w1 = 0;
    int measuring = 0;

    if (mode == M_SEND) {
        for (;;) {
            for (int k = 0; k < 16; k++) {
                ssize_t r = send(fd, mem, size, 0);
                if (r < 0) {
                    errors++;
                    last_err = errno;
                } else {
                    dgrams++;
                    bytes += (uint64_t)r;
                }
            }
            uint64_t t = now_ns();
            if (!measuring && t >= t_meas) {
                measuring = 1;
                m_dgrams = dgrams;
                m_bytes = bytes;
                c0 = cpu_s();
                w0 = now_ns();
            } else if (measuring && t >= t_end) {
                break;
            }
        }
        c1 = cpu_s();
        w1 = now_ns();
    } else {
        if (setup_ring(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) < 0 &&
            setup_ring(IORING_SETUP_COOP_TASKRUN) < 0 && setup_ring(0) < 0) {
            perror("io_uring_setup");
            return 1;
        }
        if (mode == M_ZCREG) {
            struct iovec iov[MAX_INFLIGHT];
            for (int i = 0; i < nbuf; i++) {
                iov[i].iov_base = mem + stride * (size_t)i;
                iov[i].iov_len = stride;
            }
            if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS, iov,
                        nbuf) < 0) {
                perror("IORING_REGISTER_BUFFERS");
                return 1;
            }
        }
        /* slot state: 0 free, else number of CQEs still expected */
        int state[MAX_INFLIGHT];
        memset(state, 0, sizeof state);
        int busy = 0;
        int stopping = 0;
        uint64_t t_stop_deadline = 0;
        for (;;) {
            /* (re)submit every free slot, in chains of `link` */
            if (!stopping) {
                int chain = 0;
                for (int i = 0; i < inflight; i++) {
                    if (state[i])
                        continue;
                    struct io_uring_sqe *s = get_sqe();
                    s->fd = fd;
                    s->addr = (uint64_t)(uintptr_t)(mem + stride * (size_t)i);
                    s->len = (unsigned)size;
                    s->user_data = (uint64_t)i;
                    if (mode == M_USEND) {
                        s->opcode = IORING_OP_SEND;
                    } else {
                        s->opcode = IORING_OP_SEND_ZC;
                        s->ioprio = IORING_SEND_ZC_REPORT_USAGE;
                        if (mode == M_ZCREG) {
                            s->ioprio |= IORING_RECVSEND_FIXED_BUF;
                            s->buf_index = (unsigned short)i;
                        }
                    }
                    if (++chain < link)
                        s->flags = IOSQE_IO_HARDLINK;
                    else
                        chain = 0;
                    state[i] = 1;
                    busy++;
                }
                if (chain) {
                    /* close an open chain: clear the link flag of its last request */
                    sqes[(sq_local_tail - 1) & *sq_mask].flags = 0;
                }
            }
            if (!busy)
                break;
            __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
            int r = uring_enter(to_submit, 1, IORING_ENTER_GETEVENTS);
            enters++;
            if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
                perror("io_uring_enter");
                return 1;
            }
            if (r > 0)
                to_submit -= (unsigned)r < to_submit ? (unsigned)r : to_submit;
            unsigned head = *cq_head;
            unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
            for (; head != tail; head++) {
                struct io_uring_cqe *c = &cqes[head & *cq_mask];
                int i = (int)c->user_data;
                if (c->flags & IORING_CQE_F_NOTIF) {
                    notifs++;
                    if ((unsigned)c->res & IORING_NOTIF_USAGE_ZC_COPIED)
                        copied++;
                    state[i] = 0;
                    busy--;
                    continue;
                }
                if (c->res < 0) {
                    errors++;
                    last_err = -c->res;
                } else {
                    dgrams++;
                    bytes += (uint64_t)c->res;
                }
                if (c->flags & IORING_CQE_F_MORE) {
                    state[i] = 2; /* waiting for the notification */
                } else {
                    state[i] = 0;
                    busy--;
                }
            }
            __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
            uint64_t t = now_ns();
            if (!measuring && t >= t_meas) {
                measuring = 1;
                m_dgrams = dgrams;
                m_bytes = bytes;
                c0 = cpu_s();
                w0 = now_ns();
            } else if (measuring && !stopping && t >= t_end) {
                /* the window ends here; what is in flight drains uncounted */
                stopping = 1;
                c1 = cpu_s();
                w1 = now_ns();
                m_dgrams = dgrams - m_dgrams;
                m_bytes = bytes - m_bytes;
                t_stop_deadline = t + 2000000000ull;
            } else if (stopping && t >= t_stop_deadline) {
                fprintf(stderr, "udp_zc_ref: %d requests still in flight after 2 s\n", busy);
                break;
            }
        }
    }
    if (mode == M_SEND) {
        m_dgrams = dgrams - m_dgrams;
        m_bytes = bytes - m_bytes;
    }
    double wall = (double)(w1 - w0) / 1e9;
    printf("{\"mode\": \"%s\", \"size\": %zu, \"inflight\": %d, \"link\": %d, "
           "\"seconds\": %.6f, \"datagrams\": %llu, \"bytes\": %llu, \"cpu_s\": %.6f, "
           "\"errors\": %llu, \"last_errno\": %d, \"notifications\": %llu, "
           "\"copied\": %llu, \"enters\": %llu, \"total_datagrams\": %llu}\n",
           mode_s, size, mode == M_SEND ? 1 : inflight, link, wall,
           (unsigned long long)m_dgrams, (unsigned long long)m_bytes, c1 - c0,
           (unsigned long long)errors, last_err, (unsigned long long)notifs,
           (unsigned long long)copied, (unsigned long long)enters,
           (unsigned long long)dgrams);
    return errors && !m_bytes ? 1 : 0;
}
