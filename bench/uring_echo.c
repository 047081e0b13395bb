/*
 * uring_echo.c - minimal io_uring TCP echo server (the benchmark ceiling).
 *
 * Raw syscalls, no liburing: multishot accept, multishot recv into a
 * provided-buffer ring, one send in flight per connection (a small FIFO of
 * received buffers keeps the byte order), buffers go back to the ring when
 * their send completes.  Single thread.
 *
 * Usage: uring_echo [--host H] [--port P] [--quiet]
 * Prints "listening on H:P (loop=c-io_uring, mode=protocol)" once ready and
 * exits cleanly on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Newer than the 6.1 uapi header we build against. */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define RING_ENTRIES 4096
#define NBUFS 1024          /* provided buffers (power of two) */
#define BUF_SIZE (256 * 1024)
#define BGID 1
#define MAX_FDS 65536
#define QCAP 64             /* per-connection pending-send FIFO (>= NBUFS/conns ok) */

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
#define UD(op, fd) (((uint64_t)(op) << 32) | (uint32_t)(fd))

struct pend { uint16_t bid; uint32_t off, len; };

struct conn {
    int open;          /* fd valid */
    int eof;           /* peer done or error: close once sends drain */
    int sending;       /* a send SQE is in flight */
    unsigned head, count;
    struct pend q[QCAP];
};

/* ring state */
static int ring_fd;
static unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
static unsigned *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static unsigned sq_local_tail, to_submit;

/* buffer ring */
static struct io_uring_buf_ring *br;
static unsigned char *bufs;
static unsigned short br_tail;

static struct conn *conns;
static volatile sig_atomic_t stop;
static int listen_fd;
static int quiet;

static int uring_enter(unsigned submit, unsigned wait, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, ring_fd, submit, wait, flags, NULL, 0);
}

static struct io_uring_sqe *get_sqe(void)
{
    unsigned head = __atomic_load_n(sq_head, __ATOMIC_ACQUIRE);
    if (sq_local_tail - head >= RING_ENTRIES) {
        /* SQ full: flush what we have. */
        __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
        uring_enter(to_submit, 0, 0);
        to_submit = 0;
    }
    unsigned idx = sq_local_tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sq_array[idx] = idx;
    sq_local_tail++;
    to_submit++;
    return sqe;
}

static void buf_give(uint16_t bid)
{
    struct io_uring_buf *b = &br->bufs[br_tail & (NBUFS - 1)];
    b->addr = (uint64_t)(uintptr_t)(bufs + (size_t)bid * BUF_SIZE);
    b->len = BUF_SIZE;
    b->bid = bid;
    br_tail++;
}

static void buf_publish(void)
{
    __atomic_store_n(&br->tail, br_tail, __ATOMIC_RELEASE);
}

static void arm_accept(void)
{
    struct io_uring_sqe *s = get_sqe();
    s->opcode = IORING_OP_ACCEPT;
    s->fd = listen_fd;
    s->ioprio = IORING_ACCEPT_MULTISHOT;
    s->user_data = UD(OP_ACCEPT, listen_fd);
}

static void arm_recv(int fd)
{
    struct io_uring_sqe *s = get_sqe();
    s->opcode = IORING_OP_RECV;
    s->fd = fd;
    s->ioprio = IORING_RECV_MULTISHOT;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    s->user_data = UD(OP_RECV, fd);
}

static void issue_send(int fd, struct conn *c)
{
    struct pend *p = &c->q[c->head];
    struct io_uring_sqe *s = get_sqe();
    s->opcode = IORING_OP_SEND;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)(bufs + (size_t)p->bid * BUF_SIZE + p->off);
    s->len = p->len - p->off;
    s->msg_flags = MSG_NOSIGNAL;
    s->user_data = UD(OP_SEND, fd);
    c->sending = 1;
}

static void maybe_close(int fd, struct conn *c)
{
    if (c->eof && !c->sending && c->open) {
        /* return anything still queued */
        while (c->count) {
            buf_give(c->q[c->head].bid);
            c->head = (c->head + 1) % QCAP;
            c->count--;
        }
        close(fd);
        c->open = 0;
    }
}

static void on_sig(int sig)
{
    (void)sig;
    stop = 1;
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
        fprintf(stderr, "uring_echo: kernel lacks IORING_FEAT_SINGLE_MMAP\n");
        exit(1);
    }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t sz = sq_sz > cq_sz ? sq_sz : cq_sz;
    unsigned char *sq = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                             fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) {
        perror("mmap sq");
        exit(1);
    }
    unsigned char *cq = sq;
    sq_head = (unsigned *)(sq + p.sq_off.head);
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        perror("mmap sqes");
        exit(1);
    }
    sq_local_tail = *sq_tail;
    return 0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 25000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc)
            host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quiet"))
            quiet = 1;
        else {
            fprintf(stderr, "usage: uring_echo [--host H] [--port P] [--quiet]\n");
            return 2;
        }
    }

    if (setup_ring(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) < 0 &&
        setup_ring(IORING_SETUP_COOP_TASKRUN) < 0 && setup_ring(0) < 0) {
        perror("io_uring_setup");
        return 1;
    }

    /* provided buffer ring */
    size_t br_sz = NBUFS * sizeof(struct io_uring_buf);
    br = mmap(NULL, br_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    bufs = mmap(NULL, (size_t)NBUFS * BUF_SIZE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED || bufs == MAP_FAILED) {
        perror("mmap buffers");
        return 1;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)br;
    reg.ring_entries = NBUFS;
    reg.bgid = BGID;
    if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        perror("IORING_REGISTER_PBUF_RING");
        return 1;
    }
    for (unsigned i = 0; i < NBUFS; i++)
        buf_give((uint16_t)i);
    buf_publish();

    conns = calloc(MAX_FDS, sizeof *conns);

    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "uring_echo: bad IPv4 address %s\n", host);
        return 2;
    }
    if (bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(listen_fd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }

    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_sig; /* no SA_RESTART: io_uring_enter returns EINTR */
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);

    arm_accept();
    printf("listening on %s:%d (loop=c-io_uring, mode=protocol)\n", host, port);
    fflush(stdout);

    while (!stop) {
        __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
        int r = uring_enter(to_submit, 1, IORING_ENTER_GETEVENTS);
        if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
            perror("io_uring_enter");
            break;
        }
        if (r >= 0)
            to_submit -= (unsigned)r < to_submit ? (unsigned)r : to_submit;
        else if (errno == EINTR)
            continue;

        unsigned head = *cq_head;
        unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
        int gave = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &cqes[head & *cq_mask];
            int op = (int)(cqe->user_data >> 32);
            int fd = (int)(uint32_t)cqe->user_data;
            int res = cqe->res;
            unsigned fl = cqe->flags;

            if (op == OP_ACCEPT) {
                if (res >= 0) {
                    if (res >= MAX_FDS) {
                        close(res);
                    } else {
                        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        memset(&conns[res], 0, sizeof conns[res]);
                        conns[res].open = 1;
                        arm_recv(res);
                    }
                }
                if (!(fl & IORING_CQE_F_MORE))
                    arm_accept();
            } else if (op == OP_RECV) {
                struct conn *c = &conns[fd];
                if (res > 0 && (fl & IORING_CQE_F_BUFFER)) {
                    uint16_t bid = (uint16_t)(fl >> IORING_CQE_BUFFER_SHIFT);
                    if (c->count == QCAP || c->eof) {
                        buf_give(bid); /* cannot happen with sane clients */
                        gave = 1;
                        c->eof = 1;
                    } else {
                        struct pend *p = &c->q[(c->head + c->count) % QCAP];
                        p->bid = bid;
                        p->off = 0;
                        p->len = (uint32_t)res;
                        c->count++;
                        if (!c->sending)
                            issue_send(fd, c);
                    }
                    if (!(fl & IORING_CQE_F_MORE) && !c->eof)
                        arm_recv(fd);
                } else if (res == -ENOBUFS) {
                    if (!c->eof)
                        arm_recv(fd); /* buffers come back as sends complete */
                } else if (!(fl & IORING_CQE_F_MORE)) {
                    c->eof = 1; /* EOF (0) or error */
                    maybe_close(fd, c);
                    gave = 1;
                }
            } else if (op == OP_SEND) {
                struct conn *c = &conns[fd];
                struct pend *p = &c->q[c->head];
                c->sending = 0;
                if (res < 0) {
                    c->eof = 1;
                } else {
                    p->off += (uint32_t)res;
                    if (p->off >= p->len) {
                        buf_give(p->bid);
                        gave = 1;
                        c->head = (c->head + 1) % QCAP;
                        c->count--;
                    }
                }
                if (c->count && !c->eof)
                    issue_send(fd, c);
                else
                    maybe_close(fd, c);
            }
        }
        __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
        if (gave)
            buf_publish();
    }
    if (!quiet)
        fprintf(stderr, "uring_echo: shutting down\n");
    return 0;
}
