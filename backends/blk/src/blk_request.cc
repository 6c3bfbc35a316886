// SPDX-License-Identifier: Apache-2.0
// virtio-blk request handling (§5.2.6): parse and check a popped chain, turn
// it into io_uring operations on the backing file, and complete it with the
// status byte. Shared by every transport; blk_device.cc drives it.
#include <linux/falloc.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "blk_queue.h"
#include "vioport/core/log.h"

namespace vioport {
namespace {

constexpr size_t kIovMax = 1024;                 // UIO_MAXIOV: readv/writev limit
// Copy-only memory: data moves through a per-slot bounce buffer in steps of
// at most this, so a hostile driver cannot make us allocate more than
// queue size x 256 KiB however long its requests are.
constexpr uint32_t kBounceStep = 256 << 10;
constexpr size_t kZeroIovs = 16;                 // zero-fill: iovecs per writev

// iovecs for bytes [offset, offset + len) of `segs` (host-mapped segments
// only). False if a segment is not mapped or there would be too many.
bool BuildIov(std::span<const Segment> segs, uint64_t offset, uint64_t len, std::vector<iovec>& iov) {
  iov.clear();
  for (const Segment& s : segs) {
    if (len == 0) break;
    if (offset >= s.len) {
      offset -= s.len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(s.len - offset, len);
    if (!s.host || iov.size() == kIovMax) return false;
    iov.push_back({s.host + offset, n});
    len -= n;
    offset = 0;
  }
  return len == 0;
}

// `capacity_sectors` is one load of the atomic capacity per request: Resize
// may change it between requests, never within one's check.
bool RangeOk(uint64_t sector, uint64_t sectors, uint64_t capacity_sectors) {
  return sector <= capacity_sectors && sectors <= capacity_sectors - sector;
}

}  // namespace

void BlkDevice::Start(Queue& q, Request& r) {
  DescriptorChain& c = r.chain;
  r.op = Request::Op::kNone;
  r.bounced = false;
  r.data_len = 0;
  r.used_len = 1;
  r.iov_first = 0;
  // §5.2.6: a 16-byte readable header, data, a 1-byte writable status at the
  // end. Without room for header and status there is nothing to answer with.
  if (c.readable_bytes() < sizeof(blk::ReqHeader)) return FailQueue(q, r, "request without a 16-byte header");
  if (c.writable_bytes() < 1) return FailQueue(q, r, "request without a status byte");
  blk::ReqHeader h;
  if (c.Read(0, &h, sizeof h) != RingError::kNone) return Abandon(q, r);
  r.type = h.type;                 // guest-controlled
  const uint64_t sector = h.sector;  // guest-controlled
  switch (r.type) {
    case blk::req::kIn:
      if (c.readable_bytes() != sizeof h) return FailQueue(q, r, "IN request with device-readable data");
      return StartReadWrite(q, r, /*write=*/false, sector);
    case blk::req::kOut:
      if (c.writable_bytes() != 1) return FailQueue(q, r, "OUT request with device-writable data");
      return StartReadWrite(q, r, /*write=*/true, sector);
    case blk::req::kFlush:
      return StartFlush(q, r);
    case blk::req::kGetId:
      return StartGetId(q, r);
    case blk::req::kDiscard:
      return StartDiscardWriteZeroes(q, r, /*zeroes=*/false);
    case blk::req::kWriteZeroes:
      return StartDiscardWriteZeroes(q, r, /*zeroes=*/true);
    default:
      return Finish(q, r, blk::status::kUnsupp);
  }
}

void BlkDevice::StartReadWrite(Queue& q, Request& r, bool write, uint64_t sector) {
  DescriptorChain& c = r.chain;
  r.data_len = write ? c.readable_bytes() - sizeof(blk::ReqHeader) : c.writable_bytes() - 1;
  r.used_len = write ? 1 : c.writable_bytes();  // IN: the data and the status byte
  // §5.2.6.2: writes to a read-only device fail and write nothing.
  if (write && opts_.read_only) return Finish(q, r, blk::status::kIoErr);
  if (r.data_len % blk::kSectorSize != 0 ||
      !RangeOk(sector, r.data_len >> blk::kSectorShift, capacity_sectors()))
    return Finish(q, r, blk::status::kIoErr);
  if (r.data_len == 0) return Finish(q, r, blk::status::kOk);
  r.offset = sector << blk::kSectorShift;
  r.remaining = r.data_len;
  const uint64_t skip = write ? sizeof(blk::ReqHeader) : 0;
  // Zero copy: the kernel reads or writes guest memory directly. Copy-only
  // memory (or a buffer not contiguous in the host) goes through the bounce
  // buffer with chain copies instead, a step at a time (Submit).
  r.bounced = !BuildIov(write ? c.readable() : c.writable(), skip, r.data_len, r.iov);
  r.op = write ? Request::Op::kWrite : Request::Op::kRead;
  if (write) q.writes_in_flight++;
  Submit(q, r);
}

void BlkDevice::StartFlush(Queue& q, Request& r) {
  r.op = Request::Op::kFlush;
  // Every write popped before the flush must be on the file before fdatasync
  // runs; later writes need not wait for the flush.
  if (q.writes_in_flight > 0) {
    q.parked_flushes.push_back(q.IndexOf(r));
    return;
  }
  Submit(q, r);
}

void BlkDevice::StartGetId(Queue& q, Request& r) {
  DescriptorChain& c = r.chain;
  uint8_t id[blk::kIdBytes] = {};
  std::copy_n(opts_.serial.data(), std::min<size_t>(opts_.serial.size(), sizeof id), id);
  const uint32_t room = std::min<uint32_t>(c.writable_bytes() - 1, sizeof id);
  r.used_len = c.writable_bytes();
  c.Write(0, id, room);  // a fault is remembered: completing the chain breaks the queue
  Finish(q, r, blk::status::kOk);
}

void BlkDevice::StartDiscardWriteZeroes(Queue& q, Request& r, bool zeroes) {
  DescriptorChain& c = r.chain;
  if (opts_.read_only) return Finish(q, r, blk::status::kIoErr);
  const uint32_t payload = c.readable_bytes() - sizeof(blk::ReqHeader);
  // We offer max_discard_seg = max_write_zeroes_seg = 1.
  if (payload != sizeof(blk::DiscardWriteZeroesSeg)) return Finish(q, r, blk::status::kIoErr);
  blk::DiscardWriteZeroesSeg seg;
  if (c.Read(sizeof(blk::ReqHeader), &seg, sizeof seg) != RingError::kNone) return Abandon(q, r);
  const uint64_t sector = seg.sector;     // guest-controlled
  const uint32_t sectors = seg.num_sectors;  // guest-controlled
  const uint32_t flags = seg.flags;       // guest-controlled
  // §5.2.6.2: unknown flags, or unmap on DISCARD, are unsupported.
  const uint32_t allowed = zeroes ? blk::kSegFlagUnmap : 0;
  if (flags & ~allowed) return Finish(q, r, blk::status::kUnsupp);
  const uint32_t max = zeroes ? config_.max_write_zeroes_sectors : config_.max_discard_sectors;
  if (sectors > max || !RangeOk(sector, sectors, capacity_sectors())) return Finish(q, r, blk::status::kIoErr);
  if (sectors == 0) return Finish(q, r, blk::status::kOk);
  r.offset = sector << blk::kSectorShift;
  r.remaining = uint64_t{sectors} << blk::kSectorShift;
  if (!zeroes) {
    r.op = Request::Op::kDiscard;
  } else if ((flags & blk::kSegFlagUnmap) && !punch_hole_unsupported_) {
    r.op = Request::Op::kZeroPunch;
  } else {
    r.op = zero_range_unsupported_ ? Request::Op::kZeroFill : Request::Op::kZeroRange;
  }
  q.writes_in_flight++;
  Submit(q, r);
}

void BlkDevice::Submit(Queue& q, Request& r) {
  const bool data_op = r.op == Request::Op::kRead || r.op == Request::Op::kWrite;
  if (data_op && r.bounced) {
    // Next step: [pos, pos + n) of the data through the bounce buffer.
    const uint64_t pos = r.data_len - r.remaining;
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(r.remaining, kBounceStep));
    if (!r.staging && (r.staging = r.chain.memory()->AcquireStaging(kBounceStep))) r.staging_from = r.chain.memory();
    if (!r.staging && r.bounce.size() < n) r.bounce.resize(n);
    if (r.op == Request::Op::kWrite &&
        r.chain.Read(sizeof(blk::ReqHeader) + pos, r.BounceData(), n) != RingError::kNone)
      return Abandon(q, r);
    r.iov.assign(1, iovec{r.BounceData(), n});
    r.iov_first = 0;
  }
  if (inline_io_ && (r.op == Request::Op::kRead || r.op == Request::Op::kWrite || r.op == Request::Op::kZeroFill)) {
    if (r.op == Request::Op::kZeroFill) BuildZeroIov(r);
    q.inline_pending.push_back(q.IndexOf(r));
    q.io_in_flight++;
    return;
  }
  io_uring_sqe* sqe = GetSqe(q);
  if (!sqe) {
    LogIoError("io_uring_get_sqe", EBUSY);
    return Finish(q, r, blk::status::kIoErr);
  }
  switch (r.op) {
    case Request::Op::kRead:
    case Request::Op::kWrite: {
      const unsigned n = static_cast<unsigned>(r.iov.size() - r.iov_first);
      if (r.op == Request::Op::kRead) {
        io_uring_prep_readv(sqe, fd_, r.iov.data() + r.iov_first, n, r.offset);
      } else {
        io_uring_prep_writev(sqe, fd_, r.iov.data() + r.iov_first, n, r.offset);
      }
      break;
    }
    case Request::Op::kZeroFill: {
      BuildZeroIov(r);
      io_uring_prep_writev(sqe, fd_, r.iov.data(), static_cast<unsigned>(r.iov.size()), r.offset);
      break;
    }
    case Request::Op::kFlush:
      io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
      break;
    case Request::Op::kDiscard:
    case Request::Op::kZeroPunch:
      io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.offset),
                              static_cast<off_t>(r.remaining));
      break;
    case Request::Op::kZeroRange:
      io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.offset),
                              static_cast<off_t>(r.remaining));
      break;
    case Request::Op::kNone:
      io_uring_prep_nop(sqe);
      break;
  }
  io_uring_sqe_set_data64(sqe, q.IndexOf(r));
  q.io_in_flight++;
}

void BlkDevice::BuildZeroIov(Request& r) {
  r.iov.clear();
  r.iov_first = 0;
  uint64_t left = r.remaining;
  while (left > 0 && r.iov.size() < kZeroIovs) {
    if (zeroes_.empty()) zeroes_.assign(kZeroBufferBytes, 0);  // first use: an idle device holds none
    const size_t n = std::min<uint64_t>(left, zeroes_.size());
    r.iov.push_back({zeroes_.data(), n});
    left -= n;
  }
}

void BlkDevice::RunInline(Queue& q, bool drop) {
  // Iterative: a completion may queue the request's next step (a short
  // transfer's rest, the next bounce step) at the back of the list.
  if (q.running_inline) return;
  q.running_inline = true;
  for (size_t i = 0; i < q.inline_pending.size(); ++i) {
    Request& r = q.reqs[q.inline_pending[i]];
    int res = -ECANCELED;
    if (!drop) {
      const iovec* iov = r.iov.data() + r.iov_first;
      const int n = static_cast<int>(std::min<size_t>(r.iov.size() - r.iov_first, IOV_MAX));
      ssize_t got;
      do {
        got = r.op == Request::Op::kRead ? ::preadv(fd_, iov, n, static_cast<off_t>(r.offset))
                                         : ::pwritev(fd_, iov, n, static_cast<off_t>(r.offset));
      } while (got < 0 && errno == EINTR);
      res = got < 0 ? -errno : static_cast<int>(std::min<ssize_t>(got, INT32_MAX));
    }
    OnCompletion(q, r, res, drop);
  }
  q.inline_pending.clear();
  q.running_inline = false;
}

void BlkDevice::OnCompletion(Queue& q, Request& r, int res, bool drop) {
  q.io_in_flight--;
  if (drop) {  // reset: the chain belongs to a ring that is going away
    if (Request::IsWrite(r.op)) q.writes_in_flight--;
    r.chain = DescriptorChain();
    r.op = Request::Op::kNone;
    Release(q, r);
    return;
  }
  switch (r.op) {
    case Request::Op::kRead:
    case Request::Op::kWrite:
    case Request::Op::kZeroFill: {
      if (res < 0) {
        LogIoError(r.op == Request::Op::kRead ? "read" : "write", -res);
        return Finish(q, r, blk::status::kIoErr);
      }
      if (res == 0) {  // no progress: the file ends before its capacity (it shrank)
        LogIoError(r.op == Request::Op::kRead ? "read hit the end of the file" : "write made no progress", EIO);
        return Finish(q, r, blk::status::kIoErr);
      }
      uint64_t done = std::min<uint64_t>(static_cast<uint64_t>(res), r.remaining);
      if (r.bounced && r.op == Request::Op::kRead &&
          r.chain.Write(r.data_len - r.remaining, r.BounceData(), done) != RingError::kNone)
        return Abandon(q, r);
      r.offset += done;
      r.remaining -= done;
      if (r.remaining > 0) {  // a short transfer, or the next bounce step
        if (r.op != Request::Op::kZeroFill && !r.bounced) {
          while (done > 0 && done >= r.iov[r.iov_first].iov_len) done -= r.iov[r.iov_first++].iov_len;
          if (done > 0) {
            iovec& v = r.iov[r.iov_first];
            v.iov_base = static_cast<uint8_t*>(v.iov_base) + done;
            v.iov_len -= done;
          }
        }
        return Submit(q, r);
      }
      return Finish(q, r, blk::status::kOk);
    }
    case Request::Op::kFlush:
      if (res < 0) LogIoError("fdatasync", -res);
      return Finish(q, r, res < 0 ? blk::status::kIoErr : blk::status::kOk);
    case Request::Op::kDiscard:
      if (res == -EOPNOTSUPP) return Finish(q, r, blk::status::kUnsupp);
      if (res < 0) LogIoError("discard (punch hole)", -res);
      return Finish(q, r, res < 0 ? blk::status::kIoErr : blk::status::kOk);
    case Request::Op::kZeroPunch:
    case Request::Op::kZeroRange:
      if (res == -EOPNOTSUPP || res == -EINVAL) {
        // The file system cannot: fall back to zeroing the range, then to writing zeroes.
        if (r.op == Request::Op::kZeroPunch) {
          punch_hole_unsupported_ = true;
          r.op = zero_range_unsupported_ ? Request::Op::kZeroFill : Request::Op::kZeroRange;
        } else {
          zero_range_unsupported_ = true;
          r.op = Request::Op::kZeroFill;
        }
        return Submit(q, r);
      }
      if (res < 0) LogIoError("write zeroes (fallocate)", -res);
      return Finish(q, r, res < 0 ? blk::status::kIoErr : blk::status::kOk);
    case Request::Op::kNone:
      return Finish(q, r, blk::status::kIoErr);
  }
}

void BlkDevice::Finish(Queue& q, Request& r, uint8_t status) {
  const bool was_write = Request::IsWrite(r.op);
  if (was_write) q.writes_in_flight--;
  const bool ok = status == blk::status::kOk;
  switch (r.type) {
    case blk::req::kIn:
      counters_.reads.fetch_add(1, std::memory_order_relaxed);
      if (ok) counters_.bytes_read.fetch_add(r.data_len, std::memory_order_relaxed);
      break;
    case blk::req::kOut:
      counters_.writes.fetch_add(1, std::memory_order_relaxed);
      if (ok) counters_.bytes_written.fetch_add(r.data_len, std::memory_order_relaxed);
      break;
    case blk::req::kFlush: counters_.flushes.fetch_add(1, std::memory_order_relaxed); break;
    case blk::req::kDiscard: counters_.discards.fetch_add(1, std::memory_order_relaxed); break;
    case blk::req::kWriteZeroes: counters_.write_zeroes.fetch_add(1, std::memory_order_relaxed); break;
    case blk::req::kGetId: counters_.get_ids.fetch_add(1, std::memory_order_relaxed); break;
    default: counters_.unsupported.fetch_add(1, std::memory_order_relaxed); break;
  }
  if (!ok) counters_.errors.fetch_add(1, std::memory_order_relaxed);
  DescriptorChain& c = r.chain;
  // A failed copy is remembered by the chain; AddUsed then breaks the queue.
  c.Write(c.writable_bytes() - 1, &status, 1);
  q.vq->AddUsed(std::move(c), r.used_len);
  q.publish = true;
  Release(q, r);
  if (was_write && !q.parked_flushes.empty()) ReleaseFlushes(q);
}

void BlkDevice::ReleaseFlushes(Queue& q) {
  // The oldest write still in flight; flushes popped before it may go.
  uint64_t oldest = UINT64_MAX;
  if (q.writes_in_flight > 0)
    for (const Request& w : q.reqs)
      if (w.in_use && Request::IsWrite(w.op)) oldest = std::min(oldest, w.seq);
  size_t n = 0;
  while (n < q.parked_flushes.size() && q.reqs[q.parked_flushes[n]].seq < oldest) ++n;
  // (Submit failing into Finish of a flush does not touch the parked list.)
  for (size_t i = 0; i < n; ++i) Submit(q, q.reqs[q.parked_flushes[i]]);
  q.parked_flushes.erase(q.parked_flushes.begin(), q.parked_flushes.begin() + static_cast<ptrdiff_t>(n));
}

void BlkDevice::ReleaseStaging(Request& r) {
  if (r.staging) r.staging_from->ReleaseStaging(r.staging);
  r.staging = nullptr;
  r.staging_from = nullptr;
}

void BlkDevice::Release(Queue& q, Request& r) {
  ReleaseStaging(r);
  r.in_use = false;
  r.op = Request::Op::kNone;
  q.free.push_back(q.IndexOf(r));
}

void BlkDevice::Abandon(Queue& q, Request& r) {
  const bool was_write = Request::IsWrite(r.op);
  if (was_write) q.writes_in_flight--;
  q.vq->AddUsed(std::move(r.chain), 0);
  Release(q, r);
  if (was_write && !q.parked_flushes.empty()) ReleaseFlushes(q);
}

void BlkDevice::FailQueue(Queue& q, Request& r, const char* why) {
  counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
  VIOPORT_LOG(kWarning, "blk: ", opts_.path, ": queue ", q.index, ": ", why, " (", r.chain.readable_bytes(),
              " readable, ", r.chain.writable_bytes(), " writable bytes)");
  q.vq->Fail(RingError::kBadRequest);
  q.vq->AddUsed(std::move(r.chain), 0);  // the queue is broken: nothing is written
  Release(q, r);
}

}  // namespace vioport
