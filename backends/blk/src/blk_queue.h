// SPDX-License-Identifier: Apache-2.0
// BlkDevice's per-virtqueue state: the io_uring that serves it and its pool
// of request slots. Private to backends/blk (blk_device.cc, blk_request.cc).
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "vioport/backends/blk_device.h"

namespace vioport {

// The source of WRITE_ZEROES where fallocate cannot (allocated on first use).
inline constexpr size_t kZeroBufferBytes = 64 << 10;

// One popped chain and the state of its I/O. Slots are reused: their vectors
// keep their capacity, so the steady state allocates nothing per request.
struct BlkDevice::Request {
  enum class Op : uint8_t {
    kNone,       // not started, or done without I/O
    kRead,       // readv into the chain's writable data
    kWrite,      // writev from the chain's readable data
    kFlush,      // fsync(DATASYNC)
    kDiscard,    // fallocate(PUNCH_HOLE | KEEP_SIZE)
    kZeroPunch,  // WRITE_ZEROES with unmap: fallocate(PUNCH_HOLE | KEEP_SIZE)
    kZeroRange,  // WRITE_ZEROES: fallocate(ZERO_RANGE | KEEP_SIZE)
    kZeroFill,   // WRITE_ZEROES where fallocate cannot: writev of zeroes
  };
  static bool IsWrite(Op op) { return op >= Op::kDiscard || op == Op::kWrite; }

  DescriptorChain chain;
  Op op = Op::kNone;
  bool in_use = false;
  bool bounced = false;    // data goes through `bounce`, a step at a time (memory not mapped)
  uint32_t type = 0;       // request type from the header; guest-controlled
  uint32_t data_len = 0;   // payload bytes
  uint32_t used_len = 0;   // what the used entry reports
  uint64_t offset = 0;     // next byte of the file to transfer
  uint64_t remaining = 0;  // bytes still to transfer (or to zero, discard)
  uint64_t seq = 0;        // pop order within the queue: flushes wait for earlier writes
  uint32_t iov_first = 0;  // first iovec not completely transferred yet
  std::vector<iovec> iov;
  std::vector<uint8_t> bounce;
  // Instead of `bounce` while the request lives: a staging buffer of the
  // chain's memory (GuestMemory::AcquireStaging), given back on release.
  uint8_t* staging = nullptr;
  GuestMemory* staging_from = nullptr;
  uint8_t* BounceData() { return staging ? staging : bounce.data(); }
};

struct BlkDevice::Queue {
  explicit Queue(uint16_t i) : index(i) {}
  ~Queue() {
    if (ring_ready) io_uring_queue_exit(&ring);
  }
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  uint16_t index;
  io_uring ring{};
  bool ring_ready = false;
  DeviceQueue* vq = nullptr;  // set while active and the driver enabled the queue
  std::vector<Request> reqs;
  std::vector<uint16_t> free;            // indices into reqs
  std::vector<uint16_t> parked_flushes;  // flushes waiting for earlier writes, in pop order
  std::vector<uint16_t> inline_pending;  // inline reads/writes to run (BlkOptions::Io)
  bool running_inline = false;           // RunInline is on the stack: do not re-enter
  uint32_t io_in_flight = 0;             // requests with an SQE queued or submitted
  uint32_t writes_in_flight = 0;         // of those (and parked ones excluded): write-type
  uint64_t next_seq = 0;
  bool stalled = false;  // stopped popping because every slot was busy
  bool publish = false;  // used entries added since the last Publish()

  uint16_t IndexOf(const Request& r) const { return static_cast<uint16_t>(&r - reqs.data()); }
};

}  // namespace vioport
