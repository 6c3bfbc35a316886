// SPDX-License-Identifier: Apache-2.0
// vsock_peer: the Linux guest's end of the vsock tests (tests/linux,
// docs/linux-guest-tests.md). Built static (cc -static -O2) and put into the
// initramfs as /bin/vsock_peer. It speaks AF_VSOCK through the guest kernel's
// own vsock core and virtio transport, sends seeded data (the same pattern
// as guest/common/include/vioport/guest/pattern.h) and verifies what it
// receives byte for byte. Every command ends with one line
//   VSOCK-RESULT: <name> OK key=value ...      or
//   VSOCK-RESULT: <name> FAIL <reason>
// on stdout and exits 0 on OK, 1 on FAIL.
//
//   vsock_peer cid
//       prints this guest's CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID)
//   vsock_peer stream-connect NAME CID PORT SEND SEND_SEED RECV RECV_SEED
//   vsock_peer stream-listen  NAME PORT SEND SEND_SEED RECV RECV_SEED
//       one SOCK_STREAM connection (connected to CID:PORT, or the first
//       accepted on PORT): sends SEND bytes of stream SEND_SEED while it
//       receives and checks RECV bytes of stream RECV_SEED; after sending it
//       shuts down its write side, and it ends when the peer's EOF arrives.
//       More or fewer bytes than RECV fail. The listener prints
//       "VSOCK-LISTENING: NAME PORT" once it listens, and the peer's address.
//   vsock_peer stream-serve NAME PORT COUNT SEND SEND_SEED RECV RECV_SEED
//       COUNT SOCK_STREAM connections accepted on PORT and served at once (a
//       process each), each the exchange of stream-listen with the seeds
//       offset by the connecting peer's CID (SEND_SEED+CID, RECV_SEED+CID),
//       so each peer's bytes are its own; a CID that comes twice fails.
//       Prints "VSOCK-LISTENING: NAME PORT", "VSOCK-ACCEPTED: NAME from cid
//       C port P" per connection, each connection's result as NAME-cidC,
//       then "VSOCK-RESULT: NAME OK connections=COUNT" when all passed.
//   vsock_peer seq-connect NAME CID PORT COUNT SEED
//       one SOCK_SEQPACKET connection: COUNT messages of the sizes in
//       kSeqSizes (cycled), message i holding stream SEED at the message's
//       offset in the concatenation; the peer echoes each. At most two are
//       outstanding. Every recvmsg must return exactly one whole message
//       (right size, MSG_EOR, no MSG_TRUNC) with the right bytes.
//   vsock_peer many-connect NAME CID PORT N BYTES SEED
//       N SOCK_STREAM connections open at once; connection i sends a 4-byte
//       little-endian index i, then BYTES bytes of stream SEED+i, and must
//       get exactly those 4+BYTES bytes back (the peer echoes); all N
//       connections are driven concurrently (poll).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char* g_name = "vsock_peer";

static void Fail(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void Fail(const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("VSOCK-RESULT: %s FAIL %s\n", g_name, msg);
  fflush(stdout);
  exit(1);
}

static double Now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t ParseU64(const char* s) {
  char* end = NULL;
  errno = 0;
  const unsigned long long v = strtoull(s, &end, 0);
  if (errno || !end || *end) Fail("bad number '%s'", s);
  return (uint64_t)v;
}

// ---- the seeded pattern (guest/common/include/vioport/guest/pattern.h) ----

static uint64_t Word(uint64_t seed, uint64_t word_index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + word_index + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void Fill(uint64_t seed, uint64_t offset, uint8_t* out, size_t n) {
  size_t i = 0;
  while (i < n && (offset + i) % 8 != 0) {
    const uint64_t pos = offset + i;
    out[i++] = (uint8_t)(Word(seed, pos / 8) >> (8 * (pos % 8)));
  }
  for (; i + 8 <= n; i += 8) {
    const uint64_t w = Word(seed, (offset + i) / 8);
    memcpy(out + i, &w, 8);  // x86-64: little-endian, as the pattern is defined
  }
  for (; i < n; ++i) {
    const uint64_t pos = offset + i;
    out[i] = (uint8_t)(Word(seed, pos / 8) >> (8 * (pos % 8)));
  }
}

// Offset of the first byte of data[0, n) that is not stream `seed` at `offset`, or -1.
static int64_t Mismatch(uint64_t seed, uint64_t offset, const uint8_t* data, size_t n) {
  uint8_t want[4096];
  for (size_t i = 0; i < n; i += sizeof want) {
    const size_t k = n - i < sizeof want ? n - i : sizeof want;
    Fill(seed, offset + i, want, k);
    if (memcmp(want, data + i, k) != 0)
      for (size_t j = 0; j < k; ++j)
        if (want[j] != data[i + j]) return (int64_t)(offset + i + j);
  }
  return -1;
}

// pattern::Checksum64: FNV-1a's step over little-endian 8-byte words, the
// last partial word zero-padded, the length mixed in.
typedef struct {
  uint64_t h, len;
  uint8_t carry[8];
  size_t ncarry;
} Sum;
static void SumInit(Sum* s) {
  memset(s, 0, sizeof *s);
  s->h = 0xcbf29ce484222325ull;
}
static void SumMix(Sum* s, const uint8_t* p) {
  uint64_t w;
  memcpy(&w, p, 8);
  s->h = (s->h ^ w) * 0x100000001b3ull;
}
static void SumAdd(Sum* s, const uint8_t* d, size_t n) {
  size_t i = 0;
  s->len += n;
  while (s->ncarry && s->ncarry < 8 && i < n) s->carry[s->ncarry++] = d[i++];
  if (s->ncarry == 8) {
    SumMix(s, s->carry);
    s->ncarry = 0;
  }
  for (; i + 8 <= n; i += 8) SumMix(s, d + i);
  while (i < n) s->carry[s->ncarry++] = d[i++];
}
static uint64_t SumValue(const Sum* in) {
  Sum c = *in;
  if (c.ncarry) {
    memset(c.carry + c.ncarry, 0, 8 - c.ncarry);
    SumMix(&c, c.carry);
  }
  return (c.h ^ c.len) * 0x100000001b3ull;
}

// ---- sockets ----

static void SetNonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int Connect(int type, unsigned cid, unsigned port) {
  const int fd = socket(AF_VSOCK, type, 0);
  if (fd < 0) Fail("socket(AF_VSOCK): %s", strerror(errno));
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  if (connect(fd, (struct sockaddr*)&a, sizeof a) < 0) Fail("connect(%u:%u): %s", cid, port, strerror(errno));
  return fd;
}

// A whole-stream exchange on one connection: sends `send` bytes of stream
// `sseed` and checks `recv` bytes of stream `rseed`, both at once.
static void Exchange(int fd, uint64_t send, uint64_t sseed, uint64_t recv, uint64_t rseed) {
  static uint8_t out[65536], in[65536];
  uint64_t sent = 0, got = 0;
  size_t out_len = 0, out_off = 0;
  int eof = 0, shut = 0;
  Sum ss, rs;
  SumInit(&ss);
  SumInit(&rs);
  const double t0 = Now();
  double last = t0;
  SetNonblock(fd);
  while (!eof || !shut) {
    if (sent == send && out_off == out_len && !shut) {
      if (shutdown(fd, SHUT_WR) < 0) Fail("shutdown(SHUT_WR) after %" PRIu64 " bytes: %s", sent, strerror(errno));
      shut = 1;
      continue;
    }
    struct pollfd p = {.fd = fd, .events = (short)((eof ? 0 : POLLIN) | (shut ? 0 : POLLOUT))};
    const int r = poll(&p, 1, 1000);
    if (r < 0 && errno != EINTR) Fail("poll: %s", strerror(errno));
    if (Now() - last > 60)
      Fail("no progress for 60 s: sent %" PRIu64 " of %" PRIu64 ", received %" PRIu64 " of %" PRIu64, sent, send, got,
           recv);
    if (r <= 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = read(fd, in, sizeof in);
      if (n < 0 && errno != EAGAIN && errno != EINTR)
        Fail("read after %" PRIu64 " bytes: %s", got, strerror(errno));
      if (n == 0) eof = 1;
      if (n > 0) {
        if (got + (uint64_t)n > recv) Fail("received more than %" PRIu64 " bytes", recv);
        const int64_t bad = Mismatch(rseed, got, in, (size_t)n);
        if (bad >= 0) Fail("received byte %" PRId64 " is not the seed-%" PRIu64 " pattern", bad, rseed);
        SumAdd(&rs, in, (size_t)n);
        got += (uint64_t)n;
        last = Now();
      }
    }
    if (!shut && (p.revents & POLLOUT)) {
      if (out_off == out_len && sent < send) {
        out_len = send - sent < sizeof out ? (size_t)(send - sent) : sizeof out;
        Fill(sseed, sent, out, out_len);
        out_off = 0;
      }
      if (out_off < out_len) {
        const ssize_t n = write(fd, out + out_off, out_len - out_off);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
          Fail("write after %" PRIu64 " bytes: %s", sent, strerror(errno));
        if (n > 0) {
          SumAdd(&ss, out + out_off, (size_t)n);
          out_off += (size_t)n;
          sent += (uint64_t)n;
          last = Now();
        }
      }
    }
  }
  if (got != recv) Fail("received %" PRIu64 " bytes, expected %" PRIu64, got, recv);
  const double dt = Now() - t0;
  printf("VSOCK-RESULT: %s OK sent=%" PRIu64 " sent_sum=%016" PRIx64 " recv=%" PRIu64 " recv_sum=%016" PRIx64
         " seconds=%.2f\n",
         g_name, sent, SumValue(&ss), got, SumValue(&rs), dt);
}

static int CmdCid(void) {
  const int fd = open("/dev/vsock", O_RDONLY);
  if (fd < 0) Fail("open /dev/vsock: %s", strerror(errno));
  unsigned cid = 0;
  if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0) Fail("IOCTL_VM_SOCKETS_GET_LOCAL_CID: %s", strerror(errno));
  printf("VSOCK-RESULT: %s OK cid=%u\n", g_name, cid);
  return 0;
}

static int CmdStreamConnect(char** a) {
  const int fd = Connect(SOCK_STREAM, (unsigned)ParseU64(a[0]), (unsigned)ParseU64(a[1]));
  Exchange(fd, ParseU64(a[2]), ParseU64(a[3]), ParseU64(a[4]), ParseU64(a[5]));
  close(fd);
  return 0;
}

static int CmdStreamListen(char** a) {
  const unsigned port = (unsigned)ParseU64(a[0]);
  const int l = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (l < 0) Fail("socket(AF_VSOCK): %s", strerror(errno));
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  if (bind(l, (struct sockaddr*)&addr, sizeof addr) < 0) Fail("bind port %u: %s", port, strerror(errno));
  if (listen(l, 16) < 0) Fail("listen: %s", strerror(errno));
  printf("VSOCK-LISTENING: %s %u\n", g_name, port);
  fflush(stdout);
  struct sockaddr_vm peer;
  socklen_t len = sizeof peer;
  const int fd = accept(l, (struct sockaddr*)&peer, &len);
  if (fd < 0) Fail("accept: %s", strerror(errno));
  close(l);
  printf("VSOCK-ACCEPTED: %s from cid %u port %u\n", g_name, peer.svm_cid, peer.svm_port);
  fflush(stdout);
  Exchange(fd, ParseU64(a[1]), ParseU64(a[2]), ParseU64(a[3]), ParseU64(a[4]));
  close(fd);
  return 0;
}

static int CmdStreamServe(char** a) {
  const unsigned port = (unsigned)ParseU64(a[0]);
  const uint64_t count = ParseU64(a[1]), send = ParseU64(a[2]), sseed = ParseU64(a[3]), recv = ParseU64(a[4]),
                 rseed = ParseU64(a[5]);
  if (count == 0 || count > 64) Fail("COUNT must be 1..64");
  const int l = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (l < 0) Fail("socket(AF_VSOCK): %s", strerror(errno));
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  if (bind(l, (struct sockaddr*)&addr, sizeof addr) < 0) Fail("bind port %u: %s", port, strerror(errno));
  if (listen(l, 16) < 0) Fail("listen: %s", strerror(errno));
  printf("VSOCK-LISTENING: %s %u\n", g_name, port);
  fflush(stdout);
  unsigned cids[64];
  pid_t pids[64];
  for (uint64_t i = 0; i < count; ++i) {
    struct sockaddr_vm peer;
    socklen_t len = sizeof peer;
    const int fd = accept(l, (struct sockaddr*)&peer, &len);
    if (fd < 0) Fail("accept %" PRIu64 ": %s", i, strerror(errno));
    for (uint64_t j = 0; j < i; ++j)
      if (cids[j] == peer.svm_cid) Fail("a second connection from cid %u", peer.svm_cid);
    cids[i] = peer.svm_cid;
    printf("VSOCK-ACCEPTED: %s from cid %u port %u\n", g_name, peer.svm_cid, peer.svm_port);
    fflush(stdout);
    pids[i] = fork();
    if (pids[i] < 0) Fail("fork: %s", strerror(errno));
    if (pids[i] == 0) {
      static char name[96];
      snprintf(name, sizeof name, "%s-cid%u", g_name, peer.svm_cid);
      g_name = name;
      close(l);
      Exchange(fd, send, sseed + peer.svm_cid, recv, rseed + peer.svm_cid);
      exit(0);
    }
    close(fd);
  }
  close(l);
  int failed = 0;
  for (uint64_t i = 0; i < count; ++i) {
    int st = 0;
    if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
  }
  if (failed) Fail("%d of %" PRIu64 " connections failed", failed, count);
  printf("VSOCK-RESULT: %s OK connections=%" PRIu64 "\n", g_name, count);
  return 0;
}

// Message sizes, cycled (the host's check in linux_guest_test.cc has the
// same table): tiny ones, ones around a 4 KiB receive buffer, and ones larger
// than one 64 KiB packet (several packets, EOM only on the last).
static const size_t kSeqSizes[] = {1, 2, 3, 44, 100, 1000, 4052, 4096, 4097, 8192, 12345, 65536, 65537, 100000, 7};
#define kNumSeqSizes (sizeof kSeqSizes / sizeof kSeqSizes[0])

static int CmdSeqConnect(char** a) {
  const int fd = Connect(SOCK_SEQPACKET, (unsigned)ParseU64(a[0]), (unsigned)ParseU64(a[1]));
  const uint64_t count = ParseU64(a[2]), seed = ParseU64(a[3]);
  static uint8_t out[131072], in[262144];
  uint64_t sent = 0, got = 0, send_off = 0, recv_off = 0, bytes = 0;
  Sum rs;
  SumInit(&rs);
  const double t0 = Now();
  while (got < count) {
    // Up to two messages outstanding, then one echo back.
    while (sent < count && sent - got < 2) {
      const size_t n = kSeqSizes[sent % kNumSeqSizes];
      Fill(seed, send_off, out, n);
      const ssize_t w = send(fd, out, n, 0);
      if (w != (ssize_t)n)
        Fail("send of message %" PRIu64 " (%zu bytes) returned %zd: %s", sent, n, w, w < 0 ? strerror(errno) : "short");
      send_off += n;
      ++sent;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    const int r = poll(&p, 1, 60000);
    if (r == 0) Fail("no echo of message %" PRIu64 " within 60 s", got);
    if (r < 0) Fail("poll: %s", strerror(errno));
    struct iovec iov = {.iov_base = in, .iov_len = sizeof in};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    const ssize_t n = recvmsg(fd, &m, 0);
    const size_t want = kSeqSizes[got % kNumSeqSizes];
    if (n < 0) Fail("recvmsg of message %" PRIu64 ": %s", got, strerror(errno));
    if (n == 0) Fail("EOF before message %" PRIu64 " of %" PRIu64, got, count);
    if ((size_t)n != want)
      Fail("message %" PRIu64 " came back as %zd bytes, sent %zu (boundaries lost)", got, n, want);
    if (m.msg_flags & MSG_TRUNC) Fail("message %" PRIu64 ": MSG_TRUNC", got);
    if (!(m.msg_flags & MSG_EOR)) Fail("message %" PRIu64 ": no MSG_EOR", got);
    const int64_t bad = Mismatch(seed, recv_off, in, (size_t)n);
    if (bad >= 0) Fail("message %" PRIu64 ": byte %" PRId64 " of the stream is wrong", got, bad - (int64_t)recv_off);
    SumAdd(&rs, in, (size_t)n);
    recv_off += (uint64_t)n;
    bytes += (uint64_t)n;
    ++got;
  }
  close(fd);
  printf("VSOCK-RESULT: %s OK messages=%" PRIu64 " bytes=%" PRIu64 " recv_sum=%016" PRIx64 " seconds=%.2f\n", g_name,
         got, bytes, SumValue(&rs), Now() - t0);
  return 0;
}

struct Conn {
  int fd;
  uint64_t sent, got, total;  // total = 4 + BYTES each way
  uint8_t head[4];
  int shut, eof;
};

static int CmdManyConnect(char** a) {
  const unsigned cid = (unsigned)ParseU64(a[0]), port = (unsigned)ParseU64(a[1]);
  const uint64_t n = ParseU64(a[2]), bytes = ParseU64(a[3]), seed = ParseU64(a[4]);
  if (n == 0 || n > 1000) Fail("N must be 1..1000");
  struct Conn* c = calloc(n, sizeof *c);
  struct pollfd* p = calloc(n, sizeof *p);
  if (!c || !p) Fail("out of memory");
  const double t0 = Now();
  for (uint64_t i = 0; i < n; ++i) {
    c[i].fd = Connect(SOCK_STREAM, cid, port);
    SetNonblock(c[i].fd);
    c[i].total = 4 + bytes;
    const uint32_t idx = (uint32_t)i;
    memcpy(c[i].head, &idx, 4);
  }
  printf("VSOCK-STEP: %s: %" PRIu64 " connections open after %.2f s\n", g_name, n, Now() - t0);
  fflush(stdout);
  static uint8_t buf[16384];
  uint64_t done = 0;
  double last = Now();
  while (done < n) {
    for (uint64_t i = 0; i < n; ++i) {
      p[i].fd = c[i].eof && c[i].shut ? -1 : c[i].fd;
      p[i].events = (short)((c[i].eof ? 0 : POLLIN) | (c[i].shut ? 0 : POLLOUT));
      p[i].revents = 0;
    }
    const int r = poll(p, (nfds_t)n, 1000);
    if (r < 0 && errno != EINTR) Fail("poll: %s", strerror(errno));
    if (Now() - last > 60) Fail("no progress for 60 s (%" PRIu64 " of %" PRIu64 " connections done)", done, n);
    for (uint64_t i = 0; r > 0 && i < n; ++i) {
      struct Conn* k = &c[i];
      if (p[i].fd < 0 || !p[i].revents) continue;
      const uint64_t s = seed + i;
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        const ssize_t got = read(k->fd, buf, sizeof buf);
        if (got < 0 && errno != EAGAIN && errno != EINTR)
          Fail("connection %" PRIu64 ": read after %" PRIu64 " bytes: %s", i, k->got, strerror(errno));
        if (got == 0) {
          if (k->got != k->total)
            Fail("connection %" PRIu64 ": EOF after %" PRIu64 " of %" PRIu64 " bytes", i, k->got, k->total);
          k->eof = 1;
        }
        // The echo: the 4-byte index, then stream seed+i.
        for (ssize_t j = 0; j < got;) {
          if (k->got + (uint64_t)(got - j) > k->total) Fail("connection %" PRIu64 ": more than %" PRIu64 " bytes back", i, k->total);
          if (k->got < 4) {
            if (buf[j] != k->head[k->got]) Fail("connection %" PRIu64 ": index byte %" PRIu64 " is wrong", i, k->got);
            ++j;
            ++k->got;
            continue;
          }
          const int64_t bad = Mismatch(s, k->got - 4, buf + j, (size_t)(got - j));
          if (bad >= 0) Fail("connection %" PRIu64 ": echoed byte %" PRId64 " is wrong", i, bad);
          k->got += (uint64_t)(got - j);
          j = got;
        }
        if (got > 0) last = Now();
      }
      if (!k->shut && (p[i].revents & POLLOUT)) {
        uint8_t* w = buf;
        size_t len;
        uint8_t out[16384];
        if (k->sent < 4) {
          len = 4 - (size_t)k->sent;
          w = k->head + k->sent;
        } else {
          const uint64_t left = k->total - k->sent;
          len = left < sizeof out ? (size_t)left : sizeof out;
          Fill(s, k->sent - 4, out, len);
          w = out;
        }
        if (len > 0) {
          const ssize_t wr = write(k->fd, w, len);
          if (wr < 0 && errno != EAGAIN && errno != EINTR)
            Fail("connection %" PRIu64 ": write after %" PRIu64 " bytes: %s", i, k->sent, strerror(errno));
          if (wr > 0) {
            k->sent += (uint64_t)wr;
            last = Now();
          }
        }
        if (k->sent == k->total) {
          if (shutdown(k->fd, SHUT_WR) < 0) Fail("connection %" PRIu64 ": shutdown: %s", i, strerror(errno));
          k->shut = 1;
        }
      }
      if (k->eof && k->shut) ++done;
    }
  }
  for (uint64_t i = 0; i < n; ++i) close(c[i].fd);
  printf("VSOCK-RESULT: %s OK connections=%" PRIu64 " bytes_each=%" PRIu64 " seconds=%.2f\n", g_name, n, bytes,
         Now() - t0);
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);  // a closed peer is an EPIPE to report, not a silent death
  if (argc >= 2 && strcmp(argv[1], "cid") == 0) {
    g_name = "cid";
    return CmdCid();
  }
  if (argc < 3) Fail("usage: see the comment at the top of tests/linux/vsock_peer.c");
  g_name = argv[2];
  const char* cmd = argv[1];
  if (strcmp(cmd, "stream-connect") == 0 && argc == 9) return CmdStreamConnect(argv + 3);
  if (strcmp(cmd, "stream-listen") == 0 && argc == 8) return CmdStreamListen(argv + 3);
  if (strcmp(cmd, "stream-serve") == 0 && argc == 9) return CmdStreamServe(argv + 3);
  if (strcmp(cmd, "seq-connect") == 0 && argc == 7) return CmdSeqConnect(argv + 3);
  if (strcmp(cmd, "many-connect") == 0 && argc == 8) return CmdManyConnect(argv + 3);
  Fail("unknown command or wrong argument count: %s (%d arguments)", cmd, argc - 1);
}
