/* uringloop C core: io_uring ring mechanics only (no Python objects, no policy). */
#ifndef URINGLOOP_URING_H
#define URINGLOOP_URING_H
#include <stdint.h>
#include <stddef.h>

typedef struct ul_ring ul_ring;

/* Setup. `flags` is tried first, then the built-in fallback chain. On failure NULL is
   returned and *err holds the errno of the first non-EINVAL failure (or EINVAL). */
ul_ring *ul_ring_create(unsigned entries, unsigned cq_entries, int *err);
void ul_ring_destroy(ul_ring *r);
int ul_ring_fd(ul_ring *r);
unsigned ul_ring_setup_flags(ul_ring *r);
unsigned ul_ring_features(ul_ring *r);
unsigned ul_ring_sq_entries(ul_ring *r);
unsigned ul_ring_cq_entries(ul_ring *r);
void ul_ring_mark_forked(ul_ring *r);
int ul_probe_ops(ul_ring *r, unsigned char *supported, int n);

/* Provided-buffer ring (one group per ring): room for `nbufs` buffers of `bufsize`
   bytes, `initial` of them in use at first; each ul_run after a receive ran out of
   buffers (-ENOBUFS) doubles the number in use, up to nbufs. */
int ul_pbuf_init(ul_ring *r, unsigned short bgid, unsigned nbufs, unsigned bufsize,
                 unsigned initial);
void *ul_pbuf_base(ul_ring *r);
unsigned ul_pbuf_supplied(ul_ring *r);

/* Registered buffers. */
int ul_register_buffers(ul_ring *r, void **addrs, size_t *lens, unsigned n);
int ul_unregister_buffers(ul_ring *r);

/* One prep function per operation. Each returns 0, or -EBUSY when no SQE is free
   even after flushing the queue to the kernel. */
int ul_prep_nop(ul_ring *r, uint64_t ud);
int ul_prep_accept(ul_ring *r, int fd, uint64_t ud, int multishot, void *addr, void *addrlen);
int ul_prep_connect(ul_ring *r, int fd, uint64_t ud, const void *addr, unsigned addrlen);
int ul_prep_recv(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, int msg_flags);
int ul_prep_recv_multishot(ul_ring *r, int fd, uint64_t ud, unsigned short bgid);
int ul_prep_send(ul_ring *r, int fd, uint64_t ud, const char *buf, unsigned len, int msg_flags);
int ul_prep_send_zc(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len,
                    int msg_flags, unsigned zc_flags, unsigned buf_index);
int ul_prep_sendmsg(ul_ring *r, int fd, uint64_t ud, const void *msghdr, int msg_flags, int zc, unsigned zc_flags);
int ul_prep_recvmsg(ul_ring *r, int fd, uint64_t ud, void *msghdr, int msg_flags);
int ul_prep_read(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, uint64_t off);
int ul_prep_write(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len, uint64_t off);
int ul_prep_shutdown(ul_ring *r, int fd, uint64_t ud, int how);
int ul_prep_cancel(ul_ring *r, uint64_t target, uint64_t ud);
int ul_prep_cancel_fd(ul_ring *r, int fd, uint64_t ud);
int ul_prep_poll(ul_ring *r, int fd, uint64_t ud, unsigned events, int multishot);
int ul_prep_poll_remove(ul_ring *r, uint64_t target, uint64_t ud);
int ul_prep_splice(ul_ring *r, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
                   unsigned len, unsigned splice_flags, uint64_t ud, int link);

/* Hand everything queued to the kernel now, without waiting or reaping (the requests
   start at once; their completions are reaped by the next ul_run). */
int ul_submit(ul_ring *r);

/* Submit everything queued, wait for `wait_nr` completions (timeout_ns < 0: no limit),
   then copy up to `max` completions into the arrays. Returns the number copied, or a
   negative errno on a fatal ring error. The low 32 bits of a flags entry are the CQE's
   flags; for a receive into the provided ring the high 32 bits are the offset of its
   data in the buffer area. Buffers the previous batch finished with are handed back to
   the kernel at the start of the call. */
int ul_run(ul_ring *r, unsigned wait_nr, int64_t timeout_ns,
           uint64_t *ud, int32_t *res, uint64_t *flags, unsigned max);

/* Counters: [enters, submitted, completions, overflow_flushes]. */
void ul_counters(ul_ring *r, uint64_t *out);

/* ---- datagram helpers ---- */
/* A msghdr + one iovec + a sockaddr_storage in one block, for SENDMSG/RECVMSG on
   datagram sockets. Allocate ul_dgram_size() bytes (malloc alignment suffices). */
typedef struct ul_dgram ul_dgram;
size_t ul_dgram_size(void);
/* For a send: iov = buf/len; name copied in (namelen 0: no name, a connected socket). */
void ul_dgram_set_send(ul_dgram *d, const void *buf, size_t len, const void *name,
                       unsigned namelen);
/* For a receive: iov = buf/len; the name buffer is the whole sockaddr_storage. */
void ul_dgram_set_recv(ul_dgram *d, void *buf, size_t len);
/* After a RECVMSG completion: the source address and the msg_flags (MSG_TRUNC...). */
unsigned ul_dgram_namelen(const ul_dgram *d);
const void *ul_dgram_name(const ul_dgram *d);
int ul_dgram_flags(const ul_dgram *d);
/* SENDMSG of `d`; hardlink != 0 chains the next SQE after it (IOSQE_IO_HARDLINK: it
   runs after this one completes, even when this one fails), which keeps datagrams of a
   batch in order. */
int ul_dgram_prep_sendmsg(ul_ring *r, int fd, uint64_t ud, ul_dgram *d, int hardlink);
int ul_dgram_prep_recvmsg(ul_ring *r, int fd, uint64_t ud, ul_dgram *d);

/* ---- gathered stream sends ---- */
/* A msghdr and up to `cap` iovecs in one block, for one SENDMSG that sends several queued
   buffers of a stream socket in order. Allocate ul_sendv_size(cap) bytes (malloc
   alignment suffices). The block and every buffer it points to must stay alive until the
   SENDMSG's completion. */
typedef struct ul_sendv ul_sendv;
size_t ul_sendv_size(unsigned cap);
void ul_sendv_set(ul_sendv *v, unsigned i, const char *buf, size_t len);
/* SENDMSG (MSG_NOSIGNAL) of iovecs [0, n) of `v`. */
int ul_prep_sendv(ul_ring *r, int fd, uint64_t ud, ul_sendv *v, unsigned n);

/* ---- zero-copy helpers ---- */
/* A sparse registered-buffer table of nr slots; slots set (or cleared: addr NULL, len 0)
   one at a time. */
int ul_zc_table_init(ul_ring *r, unsigned nr);
int ul_zc_table_set(ul_ring *r, unsigned slot, void *addr, size_t len);
/* Page-aligned anonymous memory (NULL on failure). */
void *ul_zc_mmap(size_t len);
int ul_zc_munmap(void *p, size_t len);
/* SEND_ZC with an optional destination (addr2/addr_len, sendto form) and hard link. */
int ul_prep_sendto_zc(ul_ring *r, int fd, uint64_t ud, const void *buf, unsigned len,
                      const void *addr, unsigned addrlen, unsigned zc_flags, unsigned buf_index,
                      int hardlink);
/* READ_FIXED into a registered buffer (buf_index >= 0), else a plain READ. */
int ul_prep_read_fixed(ul_ring *r, int fd, uint64_t ud, void *buf, unsigned len, uint64_t off,
                       int buf_index);

/* ---- aggregated batches ----
   A batch is a group of requests whose completions ul_run accounts in C instead of
   copying them out: their SQEs carry a tagged user_data (bit 63 + slot), and ul_run
   emits the batch's own completion (user_data `ud`, res = bytes sent or the first
   error) twice at most: with IORING_CQE_F_MORE when every result CQE is in but
   notifications are still due, and without it when the batch's last CQE arrived (a
   SEND_ZC result with F_MORE promises a notification, one without it does not).
   ul_batch_open returns the slot (or -EBUSY, -ENOMEM). ul_batch_close frees the slot
   and copies out [bytes, first error, its index, results, notifications, copied]. */
int ul_batch_open(ul_ring *r, uint64_t ud);
void ul_batch_close(ul_ring *r, int slot, int64_t *out);
/* n SEND_ZC of one batch on `fd`, hard-linked in order (the last one too when
   link_last), addr/addrlen the sendto destination (NULL/0: connected). buf_index[i] >= 0
   selects a registered buffer (IORING_RECVSEND_FIXED_BUF). lens NULL: every length is
   len0; buf_index NULL: every index is bidx0. All n or none (-EBUSY). */
int ul_batch_prep_sendzc(ul_ring *r, int slot, int fd, const uint64_t *addrs,
                         const uint32_t *lens, const int32_t *buf_index, unsigned n,
                         unsigned len0, int bidx0, const void *addr, unsigned addrlen,
                         unsigned zc_flags, int link_last);
/* n SENDMSG of one batch on `fd`, the msghdrs of the consecutive blocks d[0..n-1]
   (ul_dgram_set_send), hard-linked in order (the last one too when link_last). Each
   failed result is emitted on its own, in order: res < 0 with UL_BATCH_F_ERROR, and
   IORING_CQE_F_MORE unless it is the batch's last result; a batch whose last result
   succeeded completes with res = bytes sent and no flags. All n or none (-EBUSY). */
#define UL_BATCH_F_ERROR (1U << 20)
int ul_batch_prep_sendmsg(ul_ring *r, int slot, int fd, ul_dgram *d, unsigned n, int link_last);
/* link_last == UL_BATCH_UNLINKED (both batch preps): no SQE of the batch is linked. Only
   for a socket with room for the whole batch (ul_sock_send_room): unlinked SQEs are issued
   inline in SQ order and nothing is parked on poll, so the datagrams still go out in
   order; the caller decides. */
#define UL_BATCH_UNLINKED 2
/* Bytes a chain may still charge to fd's send buffer without blocking, conservatively:
   SO_SNDBUF / 2 (getsockopt reports the kernel's doubled value) minus SIOCOUTQ (what is
   still charged to it: sk_wmem_alloc for UDP, zero-copy skbs included). 0 when full,
   -errno on failure. Two syscalls: the caller asks once per chain. */
int64_t ul_sock_send_room(int fd);
#endif
