/*
 * loadgen.c - single-threaded epoll TCP echo load generator.
 *
 * Usage:
 *   loadgen [options] HOST PORT CONNS MSGSIZE DURATION_S [WARMUP_S]
 *
 * Options:
 *   --rate R      open-loop mode: R requests/s in total, spread evenly over
 *                 the connections; latency is measured from the *scheduled*
 *                 send time (no coordinated omission).  Default: closed loop
 *                 (each connection sends the next message as soon as the
 *                 previous echo is complete).
 *   --no-verify   only check lengths, not content.
 *   --markers     write "W" to stderr when the measured window starts and
 *                 "E" when it ends (used by echo_bench.py to sample the
 *                 server's CPU time exactly over the window).
 *   --reconnect   accept-rate mode: every request uses a fresh connection
 *                 (non-blocking connect, one echo of MSGSIZE bytes, close);
 *                 CONNS is the number of connections in flight at once.
 *                 "requests" then counts completed connections and the
 *                 latency covers connect + echo.  The client closes first, so
 *                 the TIME_WAIT sockets are on its side (loopback reuses them
 *                 with net.ipv4.tcp_tw_reuse=2, the default).
 *
 * Every connection has at most one request in flight.  The first 8 bytes of
 * each message carry a per-connection sequence number, so a stale or
 * misrouted echo is detected by the memcmp.  Output: one JSON line on stdout.
 * The run is always bounded: it stops at warmup + duration (plus an alarm()
 * safety net), whatever the server does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define TIMER_TAG UINT64_MAX

struct conn {
    int fd;
    int dead;
    int want_out;      /* EPOLLOUT currently registered */
    int busy;          /* request in flight */
    int connecting;    /* --reconnect: non-blocking connect in progress */
    size_t sent, rcvd;
    uint64_t seq;
    uint64_t t0;       /* send time (closed) or scheduled time (open loop) */
    uint64_t next_at;  /* open loop: next scheduled send */
    unsigned char *sbuf, *rbuf;
};

static int epfd;
static size_t msgsize;
static int verify = 1;
static uint64_t errors;
static int reconnect;
static const struct addrinfo *target;
static int alive;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Latency samples (ns, clamped to 32 bits), sorted at the end. */
static uint32_t *lat;
static size_t nlat, caplat;

static void record(uint64_t ns)
{
    if (nlat == caplat) {
        size_t ncap = caplat ? caplat * 2 : 1 << 20;
        uint32_t *p = realloc(lat, ncap * sizeof *p);
        if (!p)
            return; /* out of memory: drop the sample, keep counting */
        lat = p;
        caplat = ncap;
    }
    lat[nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(double p)
{
    if (!nlat)
        return 0.0;
    size_t i = (size_t)(p * (double)nlat);
    if (i >= nlat)
        i = nlat - 1;
    return lat[i] / 1000.0;
}

static void kill_conn(struct conn *c)
{
    if (c->dead)
        return;
    errors++;
    c->dead = 1;
    c->busy = 0;
    c->connecting = 0;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void set_out(struct conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0)};
    ev.data.ptr = c;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

static void try_send(struct conn *c)
{
    while (c->sent < msgsize) {
        ssize_t n = send(c->fd, c->sbuf + c->sent, msgsize - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out(c, 1);
            return;
        } else {
            kill_conn(c);
            return;
        }
    }
    set_out(c, 0);
}

static void start_request(struct conn *c, uint64_t t0);

/* --reconnect: open a fresh non-blocking connection for the next request. */
static void reopen(struct conn *c, uint64_t t0)
{
    int fd = socket(target->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        errors++;
        return; /* stays dead */
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->dead = 0;
    c->want_out = 1;
    c->seq++;
    memcpy(c->sbuf, &c->seq, msgsize < 8 ? msgsize : 8);
    c->sent = c->rcvd = 0;
    c->busy = 1;
    c->t0 = t0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT};
    ev.data.ptr = c;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, target->ai_addr, target->ai_addrlen) == 0) {
        c->connecting = 0;
        try_send(c);
    } else if (errno == EINPROGRESS) {
        c->connecting = 1;
    } else {
        c->dead = 0;
        kill_conn(c);
    }
}

/* --reconnect: a connection finished (or failed): close it, start the next. */
static void recycle(struct conn *c, uint64_t t0)
{
    if (!c->dead) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->dead = 1;
    }
    c->busy = 0;
    reopen(c, t0);
}

static void start_request(struct conn *c, uint64_t t0)
{
    c->seq++;
    memcpy(c->sbuf, &c->seq, msgsize < 8 ? msgsize : 8);
    c->sent = c->rcvd = 0;
    c->busy = 1;
    c->t0 = t0;
    try_send(c);
}

static int connect_to(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* A connection failed: count it; in --reconnect mode start a fresh one. */
static void fail(struct conn *c)
{
    kill_conn(c);
    if (reconnect)
        reopen(c, now_ns());
    else
        alive--;
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen [--rate R] [--no-verify] [--markers] [--reconnect] "
                    "HOST PORT CONNS MSGSIZE DURATION_S [WARMUP_S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double rate = 0.0;
    int markers = 0;
    const char *pos[6];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-verify"))
            verify = 0;
        else if (!strcmp(argv[i], "--markers"))
            markers = 1;
        else if (!strcmp(argv[i], "--reconnect"))
            reconnect = 1;
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            usage();
        else if (npos < 6)
            pos[npos++] = argv[i];
        else
            usage();
    }
    if (npos < 5)
        usage();
    const char *host = pos[0], *port = pos[1];
    int nconns = atoi(pos[2]);
    msgsize = (size_t)atol(pos[3]);
    double duration = atof(pos[4]);
    double warmup = npos > 5 ? atof(pos[5]) : 0.0;
    if (nconns <= 0 || msgsize == 0 || duration <= 0 || warmup < 0)
        usage();
    if (reconnect && rate > 0) {
        fprintf(stderr, "loadgen: --reconnect is closed-loop only\n");
        return 2;
    }
    alarm((unsigned)(warmup + duration) + 30); /* hard safety net */

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        fprintf(stderr, "loadgen: cannot resolve %s:%s\n", host, port);
        return 1;
    }
    epfd = epoll_create1(0);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    unsigned char *pattern = malloc(msgsize);
    for (size_t i = 0; i < msgsize; i++)
        pattern[i] = (unsigned char)('a' + i % 26);

    target = ai;
    for (int i = 0; i < nconns && !reconnect; i++) {
        struct conn *c = &conns[i];
        c->sbuf = malloc(msgsize);
        c->rbuf = malloc(msgsize);
        memcpy(c->sbuf, pattern, msgsize);
        c->seq = (uint64_t)i << 40;
        c->fd = connect_to(ai);
        if (c->fd < 0) {
            c->dead = 1;
            errors++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = c;
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        alive++;
    }
    if (reconnect) {
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            c->sbuf = malloc(msgsize);
            c->rbuf = malloc(msgsize);
            memcpy(c->sbuf, pattern, msgsize);
            c->seq = (uint64_t)i << 40;
            c->dead = 1;
            alive++;
        }
    }

    uint64_t t_start = now_ns();
    uint64_t t_win = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_win + (uint64_t)(duration * 1e9);
    uint64_t interval = rate > 0 ? (uint64_t)(1e9 * nconns / rate) : 0;
    int tfd = -1;
    if (rate > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.u64 = TIMER_TAG;
        epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    }
    for (int i = 0; i < nconns && !reconnect; i++) {
        if (conns[i].dead)
            continue;
        if (rate > 0)
            conns[i].next_at = t_start + interval * (uint64_t)i / (uint64_t)nconns;
        else
            start_request(&conns[i], t_start);
    }
    for (int i = 0; i < nconns && reconnect; i++) {
        reopen(&conns[i], t_start);
    }

    uint64_t requests = 0;
    int in_window = 0;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        uint64_t now = now_ns();
        if (!in_window && now >= t_win) {
            in_window = 1;
            t_win = now;
            if (markers) {
                fputs("W\n", stderr);
                fflush(stderr);
            }
        }
        if (now >= t_end || alive == 0)
            break;

        int timeout_ms = (int)((t_end - now) / 1000000) + 1;
        if (!in_window) {
            int w = (int)((t_win - now) / 1000000) + 1;
            if (w < timeout_ms)
                timeout_ms = w;
        }
        if (rate > 0) {
            /* open loop: fire due requests, arm the timer for the next one */
            uint64_t next = UINT64_MAX;
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->dead || c->busy)
                    continue;
                if (c->next_at <= now) {
                    uint64_t at = c->next_at;
                    c->next_at += interval;
                    start_request(c, at);
                } else if (c->next_at < next) {
                    next = c->next_at;
                }
            }
            if (next != UINT64_MAX) {
                struct itimerspec its = {0};
                its.it_value.tv_sec = (time_t)(next / 1000000000ull);
                its.it_value.tv_nsec = (long)(next % 1000000000ull);
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            }
        }

        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            break;
        }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == TIMER_TAG) {
                uint64_t junk;
                if (read(tfd, &junk, sizeof junk) < 0) { /* drained */ }
                continue;
            }
            struct conn *c = evs[k].data.ptr;
            if (c->dead)
                continue;
            if (evs[k].events & (EPOLLERR | EPOLLHUP) && !(evs[k].events & EPOLLIN)) {
                fail(c);
                continue;
            }
            if (c->connecting && (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                c->connecting = 0;
                if (err) {
                    c->dead = 0;
                    fail(c);
                    continue;
                }
                try_send(c);
            } else if (evs[k].events & EPOLLOUT) {
                try_send(c);
            }
            if (c->dead) {
                if (reconnect)
                    reopen(c, now_ns());
                else
                    alive--;
                continue;
            }
            if (!(evs[k].events & EPOLLIN))
                continue;
            for (;;) {
                if (!c->busy || c->rcvd >= c->sent) {
                    /* Unsolicited bytes (more than we sent) are an error. */
                    char b;
                    ssize_t r = recv(c->fd, &b, 1, MSG_PEEK);
                    if (r == 0 || (r > 0) || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                        fail(c);
                    }
                    break;
                }
                ssize_t r = recv(c->fd, c->rbuf + c->rcvd, c->sent - c->rcvd, 0);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                if (r <= 0) {
                    fail(c);
                    break;
                }
                c->rcvd += (size_t)r;
                if (c->rcvd < msgsize)
                    continue;
                uint64_t t = now_ns();
                if (verify && memcmp(c->rbuf, c->sbuf, msgsize) != 0) {
                    fail(c);
                    break;
                }
                c->busy = 0;
                if (in_window && t < t_end) {
                    requests++;
                    record(t - c->t0);
                }
                if (reconnect) {
                    recycle(c, t);
                    break;
                }
                if (rate <= 0)
                    start_request(c, t);
                else if (c->next_at <= t) {
                    uint64_t at = c->next_at;
                    c->next_at += interval;
                    start_request(c, at);
                }
                if (c->dead) {
                    fail(c);
                    break;
                }
            }
        }
    }
    uint64_t t_stop = now_ns();
    if (t_stop > t_end)
        t_stop = t_end;
    if (markers) {
        fputs("E\n", stderr);
        fflush(stderr);
    }
    double secs = in_window ? (double)(t_stop - t_win) / 1e9 : 0.0;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += lat[i];
    printf("{\"requests\": %llu, \"seconds\": %.4f, \"rps\": %.1f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"max_us\": %.1f, \"mean_us\": %.1f, \"errors\": %llu, "
           "\"conns\": %d, \"msgsize\": %zu, \"rate\": %.1f}\n",
           (unsigned long long)requests, secs, secs > 0 ? requests / secs : 0.0,
           pct_us(0.50), pct_us(0.90), pct_us(0.99), pct_us(0.999),
           nlat ? lat[nlat - 1] / 1000.0 : 0.0, nlat ? sum / nlat / 1000.0 : 0.0,
           (unsigned long long)errors, nconns, msgsize, rate);
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (!conns[i].dead)
            close(conns[i].fd);
    return 0;
}
