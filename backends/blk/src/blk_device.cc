// SPDX-License-Identifier: Apache-2.0
// BlkDevice lifecycle and I/O plumbing: opening the backing file, config
// space, activation and reset, the per-queue pop loop and the io_uring rings.
// What each request does is in blk_request.cc.
#include "vioport/backends/blk_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "blk_queue.h"
#include "vioport/core/log.h"

namespace vioport {
namespace {

// Largest DISCARD / WRITE_ZEROES range per request: 2 GiB.
constexpr uint32_t kMaxDiscardSectors = 1u << 22;
constexpr uint32_t kMaxWriteZeroesSectors = 1u << 22;
// 4 KiB: the granularity at which file systems can free blocks.
constexpr uint32_t kDiscardSectorAlignment = 8;
// kZeroBufferBytes: blk_queue.h

absl::Status ErrnoError(int err, absl::string_view what, absl::string_view path) {
  return absl::ErrnoToStatus(err, absl::StrCat("blk: ", what, " ", path));
}

// Size in bytes of what `fd` (stat'ed into `st`) holds: st_size of a regular
// file, BLKGETSIZE64 of a block device.
absl::Status SizeOf(int fd, const struct stat& st, absl::string_view path, uint64_t* bytes) {
  if (S_ISREG(st.st_mode)) {
    *bytes = static_cast<uint64_t>(st.st_size);
    return absl::OkStatus();
  }
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd, BLKGETSIZE64, bytes) != 0) return ErrnoError(errno, "BLKGETSIZE64 failed on", path);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("blk: ", path, " is neither a regular file nor a block device"));
}

uint64_t WholeSectors(uint64_t bytes) { return bytes & ~uint64_t{blk::kSectorSize - 1}; }

}  // namespace

absl::StatusOr<std::shared_ptr<BlkDevice>> BlkDevice::Open(const BlkOptions& options) {
  BlkOptions o = options;
  if (o.path.empty()) return absl::InvalidArgumentError("blk: no backing file path");
  if (o.num_queues == 0 || o.num_queues > 256)
    return absl::InvalidArgumentError(absl::StrCat("blk: num_queues ", o.num_queues, " outside 1..256"));
  if (o.queue_size == 0 || o.queue_size > kMaxQueueSize)
    return absl::InvalidArgumentError(absl::StrCat("blk: queue_size ", o.queue_size, " outside 1..", kMaxQueueSize));
  if (o.serial.size() > blk::kIdBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("blk: serial \"", o.serial, "\" is longer than ", blk::kIdBytes, " bytes"));
  if (o.serial.empty()) {
    const size_t slash = o.path.find_last_of('/');
    o.serial = slash == std::string::npos ? o.path : o.path.substr(slash + 1);
    if (o.serial.size() > blk::kIdBytes) o.serial.resize(blk::kIdBytes);
  }

  const int fd = ::open(o.path.c_str(), (o.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, o.read_only ? "cannot open (read-only)" : "cannot open", o.path);
  struct stat st;
  uint64_t bytes = 0;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, "cannot stat", o.path);
  }
  if (absl::Status s = SizeOf(fd, st, o.path, &bytes); !s.ok()) {
    ::close(fd);
    return s;
  }
  if (bytes % blk::kSectorSize)
    VIOPORT_LOG(kWarning, "blk: ", o.path, " is ", bytes, " bytes; the last ", bytes % blk::kSectorSize,
                " bytes (a partial sector) are not exposed");
  std::shared_ptr<BlkDevice> dev(new BlkDevice(o, fd, S_ISBLK(st.st_mode), WholeSectors(bytes)));
  struct statfs fs;
  const bool in_memory = S_ISREG(st.st_mode) && ::fstatfs(fd, &fs) == 0 &&
                         (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
  dev->inline_io_ = o.io == BlkOptions::Io::kInline || (o.io == BlkOptions::Io::kAuto && in_memory);
  // The eventfd and the io_urings (a descriptor each, and ring memory) are
  // made when a driver first needs them (event_fd(), Activate): an idle
  // device holds its backing file and nothing else.
  return dev;
}

BlkDevice::BlkDevice(const BlkOptions& options, int fd, bool block_device, uint64_t capacity_bytes)
    : opts_(options),
      fd_(fd),
      block_device_(block_device),
      capacity_(capacity_bytes) {
  namespace bf = blk::feature;
  features_ = feature::kCoreSupported | feature::Bit(bf::kBlkSize) | feature::Bit(bf::kFlush);
  if (opts_.size_max) features_ |= feature::Bit(bf::kSizeMax);
  if (opts_.seg_max) features_ |= feature::Bit(bf::kSegMax);
  if (opts_.num_queues > 1) features_ |= feature::Bit(bf::kMq);
  if (opts_.read_only) {
    features_ |= feature::Bit(bf::kRo);
  } else {
    features_ |= feature::Bit(bf::kDiscard) | feature::Bit(bf::kWriteZeroes);
  }
  // config_.capacity stays 0: ReadConfig fills it in from capacity_ (Resize).
  config_.size_max = opts_.size_max;
  config_.seg_max = opts_.seg_max;
  config_.blk_size = blk::kSectorSize;
  config_.num_queues = opts_.num_queues;
  config_.max_discard_sectors = kMaxDiscardSectors;
  config_.max_discard_seg = 1;
  config_.discard_sector_alignment = kDiscardSectorAlignment;
  config_.max_write_zeroes_sectors = kMaxWriteZeroesSectors;
  config_.max_write_zeroes_seg = 1;
  config_.write_zeroes_may_unmap = 1;
  for (uint16_t i = 0; i < opts_.num_queues; ++i) queues_.push_back(std::make_unique<Queue>(i));
}

BlkDevice::~BlkDevice() {
  {
    absl::MutexLock l(&mu_);
    // Normally the controller reset us already; never leave I/O aimed at guest memory.
    for (auto& q : queues_)
      if (q->vq) WaitIdle(*q, /*drop=*/true);
  }
  queues_.clear();  // io_uring_queue_exit
  if (event_fd_ >= 0) ::close(event_fd_);
  ::close(fd_);
}

int BlkDevice::event_fd() const {
  int fd = event_fd_.load(std::memory_order_acquire);
  if (fd >= 0) return fd;
  absl::MutexLock l(&efd_mu_);
  fd = event_fd_.load(std::memory_order_relaxed);
  if (fd < 0) {
    fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {
      char buf[128];
      VIOPORT_LOG(kError, "blk ", opts_.path, ": eventfd: ", strerror_r(errno, buf, sizeof buf));
      return -1;
    }
    event_fd_.store(fd, std::memory_order_release);
  }
  return fd;
}

absl::Status BlkDevice::InitRings() {
  if (rings_ready_) return absl::OkStatus();
  const int efd = event_fd();
  if (efd < 0) return ErrnoError(EMFILE, "eventfd for", opts_.path);
  for (auto& q : queues_) {
    if (q->ring_ready) continue;
    // One SQE per request at a time and at most queue_size requests, so the
    // rings never fill (the CQ is twice the SQ).
    io_uring_params p{};
    p.flags = IORING_SETUP_SUBMIT_ALL;
    int ret = io_uring_queue_init_params(opts_.queue_size, &q->ring, &p);
    if (ret == -EINVAL) {  // kernels before 5.18
      p = io_uring_params{};
      ret = io_uring_queue_init_params(opts_.queue_size, &q->ring, &p);
    }
    if (ret < 0) return ErrnoError(-ret, absl::StrCat("io_uring set-up for queue ", q->index, " of"), opts_.path);
    q->ring_ready = true;
    ret = io_uring_register_eventfd(&q->ring, efd);
    if (ret < 0) return ErrnoError(-ret, "io_uring eventfd registration for", opts_.path);
  }
  rings_ready_ = true;
  return absl::OkStatus();
}

void BlkDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  // The capacity may change under us (Resize on another thread): take it
  // from the atomic, into a copy, so that the rest of config_ stays read-only.
  blk::Config c = config_;
  c.capacity = capacity_sectors();
  std::memcpy(out.data(), reinterpret_cast<const uint8_t*>(&c) + offset, out.size());
}

absl::Status BlkDevice::BackingSize(uint64_t* bytes) const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return ErrnoError(errno, "cannot stat", opts_.path);
  return SizeOf(fd_, st, opts_.path, bytes);
}

absl::Status BlkDevice::Resize(uint64_t new_size_bytes) {
  absl::MutexLock rl(&resize_mu_);
  if (new_size_bytes % blk::kSectorSize)
    return absl::InvalidArgumentError(absl::StrCat("blk ", opts_.path, ": size ", new_size_bytes,
                                                   " is not a multiple of ", blk::kSectorSize));
  if (new_size_bytes > static_cast<uint64_t>(INT64_MAX))  // off_t
    return absl::InvalidArgumentError(absl::StrCat("blk ", opts_.path, ": size ", new_size_bytes, " is too large"));
  uint64_t backing = 0;
  if (absl::Status s = BackingSize(&backing); !s.ok()) return s;
  // We can only change the size of what we may write and what has a size of
  // its own to change; anything else the operator resizes outside, and we re-read.
  const bool can_truncate = !opts_.read_only && !block_device_;
  if (new_size_bytes != 0 && !can_truncate && new_size_bytes != WholeSectors(backing))
    return absl::FailedPreconditionError(absl::StrCat(
        "blk ", opts_.path, ": cannot resize ", block_device_ ? "a block device" : "a read-only device", " to ",
        new_size_bytes, " bytes: it has ", backing, " bytes (resize it outside, then resize to 0 to pick that up)"));
  const uint64_t target = new_size_bytes == 0 ? WholeSectors(backing) : new_size_bytes;
  const uint64_t old = capacity_.load(std::memory_order_acquire);
  if (new_size_bytes != 0 && can_truncate && backing != target) {
    if (target < old) {
      // Shrink: from here on requests are checked against the new end (they
      // are started under mu_), and writes already in flight past it must
      // land before the file is cut, or they would extend it again.
      absl::MutexLock l(&mu_);
      capacity_.store(target, std::memory_order_release);
      WaitWritesBeyond(target);
    }
    // Grow: the file is extended before any request may reach the new part.
    if (::ftruncate(fd_, static_cast<off_t>(target)) != 0) {
      const int err = errno;
      capacity_.store(old, std::memory_order_release);
      return ErrnoError(err, absl::StrCat("ftruncate to ", target, " bytes failed on"), opts_.path);
    }
  }
  capacity_.store(target, std::memory_order_release);
  if (target == old) return absl::OkStatus();  // nothing the driver would see
  counters_.resizes.fetch_add(1, std::memory_order_relaxed);
  VIOPORT_LOG(kInfo, "blk ", opts_.path, ": capacity ", old, " -> ", target, " bytes");
  // NotifyConfigChanged must run on the device thread: leave it a flag and
  // wake it through the eventfd its loop waits on (ProcessEvents).
  // No eventfd yet: no driver has ever run the device, and the next one
  // reads the new capacity anyway.
  const int efd = event_fd_.load(std::memory_order_acquire);
  if (efd < 0) return absl::OkStatus();
  resize_pending_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  if (::write(efd, &one, sizeof one) < 0 && errno != EAGAIN) {  // EAGAIN: it is readable already
    char buf[128];
    VIOPORT_LOG(kWarning, "blk ", opts_.path, ": cannot wake the device after a resize: ",
                strerror_r(errno, buf, sizeof buf));
  }
  return absl::OkStatus();
}

void BlkDevice::WaitWritesBeyond(uint64_t end) {
  for (auto& qp : queues_) {
    Queue& q = *qp;
    if (!q.vq || q.writes_in_flight == 0) continue;
    const bool beyond = std::any_of(q.reqs.begin(), q.reqs.end(), [end](const Request& r) {
      return r.in_use && Request::IsWrite(r.op) && r.offset + r.remaining > end;
    });
    if (!beyond) continue;
    // Completes them (and whatever else the queue has in flight) here, on the
    // caller's thread, under mu_ as on the device thread: as Quiesce does.
    WaitIdle(q, /*drop=*/false);
    PublishIfNeeded(q);
  }
}

absl::Status BlkDevice::Activate(ActivateContext ctx) {
  absl::MutexLock l(&mu_);
  if (active_) return absl::FailedPreconditionError("blk: activated twice");
  bool any = false;
  for (const auto& q : ctx.queues) any |= q != nullptr;
  if (!any) return absl::FailedPreconditionError("blk: no request queue enabled");
  if (ctx.queues.size() > queues_.size())
    return absl::InvalidArgumentError(absl::StrCat("blk: ", ctx.queues.size(), " queues for a device with ",
                                                   queues_.size()));
  if (absl::Status s = InitRings(); !s.ok()) return s;
  ctx_ = std::move(ctx);
  for (auto& qp : queues_) {
    Queue& q = *qp;
    q.vq = q.index < ctx_.queues.size() ? ctx_.queues[q.index].get() : nullptr;
    if (!q.vq) continue;
    // At most one request per ring entry can be in flight (a slot per entry).
    const uint32_t slots = std::min<uint32_t>(q.vq->size(), opts_.queue_size);
    if (q.reqs.size() < slots) q.reqs.resize(slots);
    q.free.clear();
    q.free.reserve(slots);
    for (uint32_t i = slots; i-- > 0;) q.free.push_back(static_cast<uint16_t>(i));
    q.parked_flushes.clear();
    q.parked_flushes.reserve(slots);
    q.io_in_flight = q.writes_in_flight = 0;
    q.next_seq = 0;
    q.stalled = q.publish = false;
  }
  active_ = true;
  return absl::OkStatus();
}

ActivateContext BlkDevice::Reset() {
  absl::MutexLock l(&mu_);
  for (auto& qp : queues_) {
    Queue& q = *qp;
    if (!q.vq) continue;
    // The driver reset: wait for the kernel to finish with guest memory, then
    // drop every request (its chain belongs to a ring that is going away).
    WaitIdle(q, /*drop=*/true);
    for (Request& r : q.reqs) {
      if (!r.in_use) continue;
      ReleaseStaging(r);  // before the memory goes with the ring
      r.chain = DescriptorChain();
      r.in_use = false;
      r.op = Request::Op::kNone;
    }
    q.parked_flushes.clear();
    q.vq = nullptr;
  }
  active_ = false;
  ActivateContext out = std::move(ctx_);
  ctx_ = ActivateContext{};
  return out;
}

void BlkDevice::QueueNotify(uint16_t queue) {
  absl::MutexLock l(&mu_);
  if (!active_ || queue >= queues_.size() || !queues_[queue]->vq) return;
  Drain(*queues_[queue]);
}

void BlkDevice::Drain(Queue& q) {
  DeviceQueue& vq = *q.vq;
  if (vq.broken()) return;
  // Suppress kicks while draining; re-enable and re-check at the end.
  vq.DisableNotifications();
  for (;;) {
    PopStatus st = PopStatus::kEmpty;
    q.stalled = false;
    for (;;) {
      if (q.free.empty()) {  // every slot busy: resume when one completes
        q.stalled = true;
        break;
      }
      Request& r = q.reqs[q.free.back()];
      st = vq.Pop(r.chain);
      if (st != PopStatus::kChain) break;
      q.free.pop_back();
      r.in_use = true;
      r.seq = q.next_seq++;
      Start(q, r);
      if (vq.broken()) {
        st = PopStatus::kError;
        break;
      }
    }
    // One submission for the batch, then whatever already completed (page
    // cache hits complete inline) goes back to the driver right away.
    SubmitPending(q);
    Reap(q, /*drop=*/false);
    PublishIfNeeded(q);
    if (st == PopStatus::kError || q.stalled || !vq.EnableNotifications()) break;
    vq.DisableNotifications();
  }
}

bool BlkDevice::ProcessEvents() {
  bool did = false;
  {
    absl::MutexLock l(&mu_);
    uint64_t v;
    const int efd = event_fd_.load(std::memory_order_acquire);
    while (efd >= 0 && ::read(efd, &v, sizeof v) == sizeof v) {
    }
    if (active_) {
      for (auto& qp : queues_) {
        Queue& q = *qp;
        if (!q.vq) continue;
        did |= Reap(q, /*drop=*/false);
        PublishIfNeeded(q);
        if (q.stalled && !q.free.empty()) Drain(q);
      }
    }
  }
  // After the eventfd was drained: a Resize that sets the flag later also
  // writes the eventfd again, so no change goes unannounced. Whether or not
  // a driver is active (the controller bumps the generation either way and
  // interrupts only after DRIVER_OK), and without mu_: the hook calls into
  // the transport's interrupt sink.
  if (resize_pending_.exchange(false, std::memory_order_acq_rel)) {
    NotifyConfigChanged();
    did = true;
  }
  return did;
}

absl::Status BlkDevice::Quiesce() {
  if (absl::Status s = Drain(); !s.ok()) return s;
  if (!opts_.read_only && ::fdatasync(fd_) != 0) return ErrnoError(errno, "fdatasync failed on", opts_.path);
  return absl::OkStatus();
}

absl::Status BlkDevice::Drain() {
  absl::MutexLock l(&mu_);
  for (auto& qp : queues_) {
    Queue& q = *qp;
    if (!q.vq) continue;
    WaitIdle(q, /*drop=*/false);
    PublishIfNeeded(q);
    // A queue that stopped popping for want of slots has notifications off:
    // serve what it holds now, or nothing would wake it again.
    for (int round = 0; round < 4 && q.stalled && !q.vq->broken(); ++round) {
      Drain(q);
      WaitIdle(q, /*drop=*/false);
      PublishIfNeeded(q);
    }
  }
  return absl::OkStatus();
}

io_uring_sqe* BlkDevice::GetSqe(Queue& q) {
  io_uring_sqe* sqe = io_uring_get_sqe(&q.ring);
  if (!sqe) {  // not expected (one SQE per slot); make room and retry once
    SubmitPending(q);
    sqe = io_uring_get_sqe(&q.ring);
  }
  return sqe;
}

void BlkDevice::SubmitPending(Queue& q) {
  RunInline(q, /*drop=*/false);
  for (int attempt = 0; attempt < 8 && io_uring_sq_ready(&q.ring) > 0; ++attempt) {
    const int ret = io_uring_submit(&q.ring);
    if (ret >= 0 || ret == -EINTR) continue;
    // EAGAIN / EBUSY: the SQEs stay queued and go with the next submission.
    LogIoError("io_uring_submit", -ret);
    break;
  }
}

bool BlkDevice::Reap(Queue& q, bool drop) {
  bool did = false;
  for (;;) {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&q.ring, head, cqe) {
      ++seen;
      const uint64_t idx = io_uring_cqe_get_data64(cqe);
      if (idx >= q.reqs.size() || !q.reqs[idx].in_use) {
        VIOPORT_LOG(kError, "blk: ", opts_.path, ": completion for idle slot ", idx, " of queue ", q.index);
        continue;
      }
      OnCompletion(q, q.reqs[idx], cqe->res, drop);
    }
    if (seen == 0) break;
    io_uring_cq_advance(&q.ring, seen);
    did = true;
    SubmitPending(q);  // continuations (short transfers, released flushes, fallbacks)
  }
  return did;
}

void BlkDevice::WaitIdle(Queue& q, bool drop) {
  RunInline(q, drop);
  while (q.io_in_flight > 0) {
    const int ret = io_uring_submit_and_wait(&q.ring, 1);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      LogIoError("io_uring_submit_and_wait", -ret);
      break;
    }
    Reap(q, drop);
  }
}

void BlkDevice::PublishIfNeeded(Queue& q) {
  if (!q.publish) return;
  q.publish = false;
  ctx_.Publish(*q.vq);
}

void BlkDevice::LogIoError(const char* what, int err) {
  // Bounded: a failing disk must not flood the log.
  if (io_errors_logged_++ >= 16) return;
  char buf[128];
  VIOPORT_LOG(kWarning, "blk: ", opts_.path, ": ", what, ": ", strerror_r(err, buf, sizeof buf));
}

void BlkDevice::AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const {
  auto add = [out](const char* name, const std::atomic<uint64_t>& v) {
    out->emplace_back(name, v.load(std::memory_order_relaxed));
  };
  add("reads", counters_.reads);
  add("writes", counters_.writes);
  add("flushes", counters_.flushes);
  add("discards", counters_.discards);
  add("write_zeroes", counters_.write_zeroes);
  add("get_ids", counters_.get_ids);
  add("unsupported", counters_.unsupported);
  add("bytes_read", counters_.bytes_read);
  add("bytes_written", counters_.bytes_written);
  add("errors", counters_.errors);
  add("bad_requests", counters_.bad_requests);
  add("resizes", counters_.resizes);
}

}  // namespace vioport
