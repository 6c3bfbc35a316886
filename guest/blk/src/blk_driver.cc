// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/blk_driver.h"

#include <algorithm>
#include <cstddef>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/core/blk_spec.h"
#include "vioport/core/spec.h"

namespace vioport {
namespace {

// virtio-blk wire format (§5.2): the one definition in core/blk_spec.h,
// under the short names this file uses.
namespace bf = blk::feature;
namespace cfg {  // §5.2.4 config offsets
constexpr uint32_t kCapacity = offsetof(blk::Config, capacity), kSizeMax = offsetof(blk::Config, size_max),
                   kSegMax = offsetof(blk::Config, seg_max), kBlkSize = offsetof(blk::Config, blk_size),
                   kNumQueues = offsetof(blk::Config, num_queues),
                   kMaxDiscardSectors = offsetof(blk::Config, max_discard_sectors),
                   kMaxWriteZeroesSectors = offsetof(blk::Config, max_write_zeroes_sectors);
}  // namespace cfg
constexpr uint32_t kTypeIn = blk::req::kIn, kTypeOut = blk::req::kOut, kTypeFlush = blk::req::kFlush,
                   kTypeGetId = blk::req::kGetId, kTypeDiscard = blk::req::kDiscard,
                   kTypeWriteZeroes = blk::req::kWriteZeroes;
constexpr uint8_t kStatusOk = blk::status::kOk, kStatusIoErr = blk::status::kIoErr,
                  kStatusUnsupp = blk::status::kUnsupp;
constexpr uint8_t kStatusUnset = 0xff;  // written before each request: the device must overwrite it
constexpr uint32_t kSegFlagUnmap = blk::kSegFlagUnmap;
constexpr uint32_t kSector = blk::kSectorSize;
constexpr uint32_t kIdBytes = blk::kIdBytes;
using ReqHeader = blk::ReqHeader;
using RangeSeg = blk::DiscardWriteZeroesSeg;

constexpr uint32_t kSlotHeaderBytes = 32;  // header + one discard/write-zeroes segment
constexpr uint32_t kMaxSegs = 128;         // data segments per request, whatever seg_max says
constexpr size_t kBounceBytes = 1 << 20;   // per queue, for the synchronous calls
constexpr uint32_t kChunkBytes = 128 << 10;  // per synchronous request

uint32_t TypeOf(BlkOp op) {
  switch (op) {
    case BlkOp::kRead: return kTypeIn;
    case BlkOp::kWrite: return kTypeOut;
    case BlkOp::kFlush: return kTypeFlush;
    case BlkOp::kDiscard: return kTypeDiscard;
    case BlkOp::kWriteZeroes: return kTypeWriteZeroes;
    case BlkOp::kGetId: return kTypeGetId;
  }
  return kTypeGetId;
}

const char* OpName(BlkOp op) {
  switch (op) {
    case BlkOp::kRead: return "read";
    case BlkOp::kWrite: return "write";
    case BlkOp::kFlush: return "flush";
    case BlkOp::kDiscard: return "discard";
    case BlkOp::kWriteZeroes: return "write-zeroes";
    case BlkOp::kGetId: return "get-id";
  }
  return "?";
}

bool HasData(BlkOp op) { return op == BlkOp::kRead || op == BlkOp::kWrite || op == BlkOp::kGetId; }
bool IsRange(BlkOp op) { return op == BlkOp::kDiscard || op == BlkOp::kWriteZeroes; }

}  // namespace

struct BlkDriver::QueueState {
  DmaBuffer headers;  // kSlotHeaderBytes per slot, device-readable
  DmaBuffer status;   // one byte per slot, device-writable
  DmaBuffer bounce;   // synchronous calls; allocated on first use
  struct Slot {
    uint64_t token = 0;
    uint32_t gen = 0;  // synchronous call the slot belongs to
    int32_t chunk = -1;
    BlkOp op = BlkOp::kRead;
    bool in_use = false;
    bool sync = false;
  };
  std::vector<Slot> slots;      // index = the token the ring carries
  std::vector<uint32_t> free;   // free slots
  std::vector<uint8_t> chunk_busy;
  std::vector<BlkCompletion> ready;  // async completions a synchronous call took off the ring
  size_t ready_head = 0;
  uint32_t async_in_flight = 0;
  uint32_t sync_gen = 0;
  uint32_t empty_polls = 0;
};

struct BlkDriver::Done {
  uint64_t token;
  uint32_t gen;
  int32_t chunk;
  BlkOp op;
  bool sync;
  uint8_t status;
  uint32_t len;
};

BlkDriver::BlkDriver(DriverTransport& transport) : t_(transport), drv_(transport) {}

BlkDriver::~BlkDriver() {
  drv_.Reset();  // the device stops touching our memory before it is freed
  FreeDma();
}

void BlkDriver::FreeDma() {
  DmaAllocator& dma = t_.dma();
  for (auto& q : queues_)
    for (DmaBuffer* b : {&q->headers, &q->status, &q->bounce})
      if (b->host) dma.Free(*b);
  queues_.clear();
}

absl::Status BlkDriver::Init(const BlkDriverOptions& options) {
  ready_ = false;
  drv_.Reset();
  FreeDma();
  opts_ = options;
  info_ = BlkInfo{};

  // §3.1.1: the driver may read the config before accepting features; the
  // queue count decides how many queues to set up.
  const uint64_t offered = t_.GetDeviceFeatures();
  uint16_t device_queues = 1;
  if (feature::Has(offered, bf::kMq)) {
    auto n = drv_.ReadConfigValue<le16>(cfg::kNumQueues);
    if (!n.ok()) return n.status();
    device_queues = std::max<uint16_t>(1, *n);
  }
  const uint16_t num_queues = opts_.num_queues ? std::min(opts_.num_queues, device_queues) : device_queues;
  const uint32_t max_size = t_.GetQueueMaxSize(0);
  if (max_size == 0) return absl::NotFoundError("blk: device has no request queue");
  const uint32_t queue_size = opts_.queue_size ? opts_.queue_size : std::min<uint32_t>(max_size, 256);

  DriverOptions d;
  d.device_id = static_cast<uint32_t>(DeviceId::kBlock);
  d.wanted_features = (opts_.ring_features & feature::kTransportRange) | feature::Bit(bf::kSizeMax) | feature::Bit(bf::kSegMax) |
                      feature::Bit(bf::kRo) | feature::Bit(bf::kBlkSize) | feature::Bit(bf::kFlush) |
                      feature::Bit(bf::kMq) | feature::Bit(bf::kDiscard) | feature::Bit(bf::kWriteZeroes);
  d.num_queues = num_queues;
  d.queue_size = queue_size;
  if (absl::Status s = drv_.Init(d); !s.ok()) return s;

  BlkInfo& i = info_;
  i.features = drv_.features();
  i.num_queues = drv_.num_queues();
  i.read_only = drv_.has_feature(bf::kRo);
  i.flush = drv_.has_feature(bf::kFlush);
  i.discard = drv_.has_feature(bf::kDiscard);
  i.write_zeroes = drv_.has_feature(bf::kWriteZeroes);
  auto read32 = [&](uint32_t off, uint32_t* v) -> absl::Status {
    auto r = drv_.ReadConfigValue<le32>(off);
    if (r.ok()) *v = *r;
    return r.status();
  };
  auto cap = drv_.ReadConfigValue<le64>(cfg::kCapacity);
  if (!cap.ok()) return cap.status();
  i.capacity_sectors = *cap;
  absl::Status s;
  if (drv_.has_feature(bf::kSizeMax)) s.Update(read32(cfg::kSizeMax, &i.size_max));
  if (drv_.has_feature(bf::kSegMax)) s.Update(read32(cfg::kSegMax, &i.seg_max));
  if (drv_.has_feature(bf::kBlkSize)) s.Update(read32(cfg::kBlkSize, &i.blk_size));
  if (i.discard) s.Update(read32(cfg::kMaxDiscardSectors, &i.max_discard_sectors));
  if (i.write_zeroes) s.Update(read32(cfg::kMaxWriteZeroesSectors, &i.max_write_zeroes_sectors));
  if (!s.ok()) return s;
  // A zero limit from the device would make no progress; treat it as "no limit".
  if (i.max_discard_sectors == 0) i.max_discard_sectors = UINT32_MAX;
  if (i.max_write_zeroes_sectors == 0) i.max_write_zeroes_sectors = UINT32_MAX;

  // Request shape: header [+ range segment] + data segments + status. Chains
  // of up to 32 buffers take one ring entry with INDIRECT; others one per buffer.
  const uint32_t ring_size = drv_.queue(0).size();
  const bool indirect = drv_.has_feature(feature::kIndirectDesc);
  const uint32_t direct_room = ring_size > 3 ? ring_size - 3 : 0;
  seg_limit_ = std::min<uint32_t>(i.seg_max ? i.seg_max : kMaxSegs, kMaxSegs);
  seg_limit_ = std::min(seg_limit_, indirect ? std::max<uint32_t>(29, direct_room) : direct_room);
  seg_bytes_ = i.size_max ? i.size_max : UINT32_MAX;
  const uint64_t per_request = uint64_t{seg_bytes_} * seg_limit_;
  chunk_bytes_ = static_cast<uint32_t>(std::min<uint64_t>(kChunkBytes, per_request) & ~uint64_t{kSector - 1});
  if (chunk_bytes_ == 0)
    return absl::FailedPreconditionError(absl::StrCat("blk: requests cannot carry a sector (size_max ", i.size_max,
                                                      ", seg_max ", i.seg_max, ", ring size ", ring_size, ")"));

  DmaAllocator& dma = t_.dma();
  for (uint16_t qi = 0; qi < i.num_queues; ++qi) {
    auto q = std::make_unique<QueueState>();
    const uint32_t slots = drv_.queue(qi).size();
    auto h = dma.Allocate(size_t{slots} * kSlotHeaderBytes, 16, Access::kRead);
    if (!h.ok()) return h.status();
    q->headers = *h;
    auto st = dma.Allocate(slots, 8, Access::kWrite);
    if (!st.ok()) {
      dma.Free(q->headers);
      return st.status();
    }
    q->status = *st;
    q->slots.resize(slots);
    q->free.reserve(slots);
    for (uint32_t k = slots; k-- > 0;) q->free.push_back(k);
    q->ready.reserve(slots);
    queues_.push_back(std::move(q));
  }
  ready_ = true;
  return absl::OkStatus();
}

absl::Status BlkDriver::CheckQueue(uint16_t queue) const {
  if (!ready_) return absl::FailedPreconditionError("blk: driver not initialised");
  if (queue >= queues_.size())
    return absl::InvalidArgumentError(absl::StrCat("blk: queue ", queue, " of ", queues_.size()));
  return absl::OkStatus();
}

absl::Status BlkDriver::Enqueue(uint16_t queue, const SyncPiece& p, uint64_t data_addr, bool sync, int32_t chunk,
                                uint64_t token, uint32_t gen) {
  QueueState& q = *queues_[queue];
  const uint32_t nsegs = HasData(p.op) ? (p.bytes + seg_bytes_ - 1) / seg_bytes_ : 0;
  if (nsegs > seg_limit_)
    return absl::InvalidArgumentError(absl::StrCat("blk: ", p.bytes, " bytes need ", nsegs,
                                                   " segments; the device takes ", seg_limit_));
  if (q.free.empty()) return absl::ResourceExhaustedError(absl::StrCat("blk: queue ", queue, " is full"));
  const uint32_t slot = q.free.back();
  uint8_t* hdr_host = q.headers.host + size_t{slot} * kSlotHeaderBytes;
  const uint64_t hdr_addr = q.headers.device_addr + uint64_t{slot} * kSlotHeaderBytes;
  ReqHeader h;
  h.type = TypeOf(p.op);
  h.reserved = 0;
  h.sector = IsRange(p.op) || p.op == BlkOp::kFlush || p.op == BlkOp::kGetId ? 0 : p.sector;
  std::memcpy(hdr_host, &h, sizeof h);

  std::array<DriverBuffer, kMaxSegs + 3> bufs;
  size_t n = 0;
  bufs[n++] = {hdr_addr, sizeof(ReqHeader), false};
  if (IsRange(p.op)) {
    RangeSeg seg;
    seg.sector = p.sector;
    seg.num_sectors = p.sectors;
    seg.flags = p.flags;
    std::memcpy(hdr_host + sizeof h, &seg, sizeof seg);
    bufs[n++] = {hdr_addr + sizeof h, sizeof(RangeSeg), false};
  }
  const bool device_writes = p.op == BlkOp::kRead || p.op == BlkOp::kGetId;
  for (uint32_t off = 0; off < p.bytes;) {
    const uint32_t len = std::min(seg_bytes_, p.bytes - off);
    bufs[n++] = {data_addr + off, len, device_writes};
    off += len;
  }
  q.status.host[slot] = kStatusUnset;
  bufs[n++] = {q.status.device_addr + slot, 1, true};

  switch (drv_.queue(queue).Add(std::span<const DriverBuffer>(bufs.data(), n), slot)) {
    case AddStatus::kOk: break;
    case AddStatus::kFull: return absl::ResourceExhaustedError(absl::StrCat("blk: queue ", queue, " ring is full"));
    case AddStatus::kBroken:
      return absl::InternalError(absl::StrCat("blk: queue ", queue, " is broken (",
                                              RingErrorName(drv_.queue(queue).error()), ")"));
    case AddStatus::kInvalid: return absl::InternalError("blk: request rejected by the ring");
  }
  q.free.pop_back();
  q.slots[slot] = {token, gen, chunk, p.op, true, sync};
  if (!sync) q.async_in_flight++;
  return absl::OkStatus();
}

absl::StatusOr<bool> BlkDriver::PollOne(uint16_t queue, bool wait, Done* out) {
  QueueState& q = *queues_[queue];
  DriverQueue& vq = drv_.queue(queue);
  uint64_t token;
  uint32_t len;
  if (!wait) {
    switch (vq.GetUsed(&token, &len)) {
      case UsedStatus::kUsed: break;
      case UsedStatus::kNone:
        // The status register may be an expensive read (an MMIO exit): look now and then.
        if ((++q.empty_polls & 63) == 0 && drv_.NeedsReset())
          return absl::UnavailableError("blk: device needs reset");
        return false;
      case UsedStatus::kBroken:
        return absl::InternalError(absl::StrCat("blk: queue ", queue, ": device broke the ring protocol (",
                                                RingErrorName(vq.error()), ")"));
    }
  } else {
    switch (WaitUsed(drv_, vq, opts_.wait, &token, &len)) {
      case WaitResult::kUsed: break;
      case WaitResult::kTimeout:
        return absl::DeadlineExceededError(absl::StrCat("blk: queue ", queue, ": no completion within ",
                                                        absl::FormatDuration(opts_.wait.timeout)));
      case WaitResult::kNeedsReset: return absl::UnavailableError("blk: device needs reset");
      case WaitResult::kBroken:
        return absl::InternalError(absl::StrCat("blk: queue ", queue, ": device broke the ring protocol (",
                                                RingErrorName(vq.error()), ")"));
    }
  }
  // The ring already checked the id against what it handed out; the slot
  // table is our own bookkeeping of the same, checked again.
  if (token >= q.slots.size() || !q.slots[token].in_use)
    return absl::InternalError(absl::StrCat("blk: queue ", queue, ": completion for slot ", token,
                                            " that is not in flight"));
  QueueState::Slot& s = q.slots[token];
  *out = Done{s.token, s.gen, s.chunk, s.op, s.sync, q.status.host[token], len};
  s.in_use = false;
  q.free.push_back(static_cast<uint32_t>(token));
  if (!s.sync) q.async_in_flight--;
  return true;
}

absl::Status BlkDriver::RunSync(uint16_t queue, size_t count, absl::FunctionRef<SyncPiece(size_t)> piece,
                                absl::FunctionRef<void(size_t, uint8_t*)> fill,
                                absl::FunctionRef<void(size_t, const uint8_t*)> done) {
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  QueueState& q = *queues_[queue];
  if (!q.bounce.host) {
    auto b = t_.dma().Allocate(kBounceBytes, 4096, Access::kReadWrite);
    if (!b.ok()) return b.status();
    q.bounce = *b;
    q.chunk_busy.assign(kBounceBytes / chunk_bytes_, 0);
  }
  auto chunk_host = [&](int32_t k) { return q.bounce.host + size_t(k) * chunk_bytes_; };
  // Completions of a call that gave up (timeout) may still arrive: the
  // generation tells them apart, and their bounce chunks are freed then.
  const uint32_t gen = ++q.sync_gen;
  size_t next = 0;
  uint32_t outstanding = 0;
  absl::Status err;
  while (outstanding > 0 || (next < count && err.ok())) {
    bool added = false;
    while (next < count && err.ok()) {
      const SyncPiece p = piece(next);
      int32_t k = -1;
      if (HasData(p.op)) {
        auto it = std::find(q.chunk_busy.begin(), q.chunk_busy.end(), 0);
        if (it == q.chunk_busy.end()) break;
        k = static_cast<int32_t>(it - q.chunk_busy.begin());
        if (p.op == BlkOp::kWrite) fill(next, chunk_host(k));
      }
      const uint64_t addr = k >= 0 ? q.bounce.device_addr + uint64_t(k) * chunk_bytes_ : 0;
      absl::Status s = Enqueue(queue, p, addr, /*sync=*/true, k, next, gen);
      if (absl::IsResourceExhausted(s)) break;  // ring full: wait for a completion
      if (!s.ok()) {
        err = s;
        break;
      }
      if (k >= 0) q.chunk_busy[k] = 1;
      ++next;
      ++outstanding;
      added = true;
    }
    if (added) drv_.Kick(queue);
    if (outstanding == 0 && (!err.ok() || next >= count)) break;
    if (outstanding == 0 && q.free.size() == q.slots.size())
      return absl::ResourceExhaustedError(absl::StrCat("blk: queue ", queue, ": no room for a request"));
    Done d;
    absl::StatusOr<bool> got = PollOne(queue, /*wait=*/true, &d);
    if (!got.ok()) return got.status();  // our chunks stay busy until their completions come
    if (!d.sync) {
      q.ready.push_back({d.token, d.status, d.len});
      continue;
    }
    if (d.chunk >= 0) q.chunk_busy[d.chunk] = 0;
    if (d.gen != gen) continue;
    --outstanding;
    const SyncPiece p = piece(d.token);
    if (d.status == kStatusOk) {
      if (p.op == BlkOp::kRead || p.op == BlkOp::kGetId) done(d.token, chunk_host(d.chunk));
      continue;
    }
    if (!err.ok()) continue;
    const std::string what = IsRange(p.op) || (HasData(p.op) && p.op != BlkOp::kGetId)
                                  ? absl::StrCat(OpName(p.op), " at sector ", p.sector, " (",
                                                 IsRange(p.op) ? p.sectors : p.bytes / kSector, " sectors)")
                                  : std::string(OpName(p.op));
    if (d.status == kStatusIoErr) {
      err = absl::DataLossError(absl::StrCat("blk: device reported IOERR for ", what));
    } else if (d.status == kStatusUnsupp) {
      err = absl::UnimplementedError(absl::StrCat("blk: device does not support ", what, " (UNSUPP)"));
    } else {
      err = absl::InternalError(
          absl::StrCat("blk: device answered ", what, " with status ", static_cast<int>(d.status)));
    }
  }
  return err;
}

absl::Status BlkDriver::Read(uint64_t sector, std::span<uint8_t> out, uint16_t queue) {
  if (out.size() % kSector) return absl::InvalidArgumentError(absl::StrCat("blk: read of ", out.size(), " bytes"));
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  const size_t chunk = chunk_bytes_;
  const size_t count = (out.size() + chunk - 1) / chunk;
  auto piece = [&](size_t i) {
    return SyncPiece{BlkOp::kRead, sector + i * chunk / kSector,
                     static_cast<uint32_t>(std::min(chunk, out.size() - i * chunk)), 0, 0};
  };
  return RunSync(
      queue, count, piece, [](size_t, uint8_t*) {},
      [&](size_t i, const uint8_t* src) { std::memcpy(out.data() + i * chunk, src, piece(i).bytes); });
}

absl::Status BlkDriver::Write(uint64_t sector, std::span<const uint8_t> in, uint16_t queue) {
  if (in.size() % kSector) return absl::InvalidArgumentError(absl::StrCat("blk: write of ", in.size(), " bytes"));
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  const size_t chunk = chunk_bytes_;
  const size_t count = (in.size() + chunk - 1) / chunk;
  auto piece = [&](size_t i) {
    return SyncPiece{BlkOp::kWrite, sector + i * chunk / kSector,
                     static_cast<uint32_t>(std::min(chunk, in.size() - i * chunk)), 0, 0};
  };
  return RunSync(
      queue, count, piece, [&](size_t i, uint8_t* dst) { std::memcpy(dst, in.data() + i * chunk, piece(i).bytes); },
      [](size_t, const uint8_t*) {});
}

absl::Status BlkDriver::Flush(uint16_t queue) {
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  if (!info_.flush) return absl::OkStatus();  // §5.2.6: no FLUSH, no volatile write cache
  return RunSync(
      queue, 1, [](size_t) { return SyncPiece{BlkOp::kFlush, 0, 0, 0, 0}; }, [](size_t, uint8_t*) {},
      [](size_t, const uint8_t*) {});
}

absl::Status BlkDriver::RangeOps(BlkOp op, uint64_t sector, uint32_t sectors, uint32_t flags) {
  if (absl::Status s = CheckQueue(0); !s.ok()) return s;
  const bool zeroes = op == BlkOp::kWriteZeroes;
  if (!(zeroes ? info_.write_zeroes : info_.discard))
    return absl::UnimplementedError(absl::StrCat("blk: ", OpName(op), " not negotiated"));
  const uint32_t max = zeroes ? info_.max_write_zeroes_sectors : info_.max_discard_sectors;
  const size_t count = sectors == 0 ? 0 : (uint64_t{sectors} + max - 1) / max;
  return RunSync(
      0, count,
      [&](size_t i) {
        const uint64_t first = uint64_t{i} * max;
        return SyncPiece{op, sector + first, 0, static_cast<uint32_t>(std::min<uint64_t>(max, sectors - first)),
                         flags};
      },
      [](size_t, uint8_t*) {}, [](size_t, const uint8_t*) {});
}

absl::Status BlkDriver::Discard(uint64_t sector, uint32_t sectors) {
  return RangeOps(BlkOp::kDiscard, sector, sectors, 0);
}

absl::Status BlkDriver::WriteZeroes(uint64_t sector, uint32_t sectors, bool unmap) {
  return RangeOps(BlkOp::kWriteZeroes, sector, sectors, unmap ? kSegFlagUnmap : 0);
}

absl::StatusOr<std::string> BlkDriver::GetId() {
  std::string id;
  absl::Status s = RunSync(
      0, 1, [](size_t) { return SyncPiece{BlkOp::kGetId, 0, kIdBytes, 0, 0}; }, [](size_t, uint8_t*) {},
      [&](size_t, const uint8_t* src) {
        // NUL-padded; no terminator when all 20 bytes are used.
        id.assign(reinterpret_cast<const char*>(src), kIdBytes);
        id.resize(std::strlen(id.c_str()));
      });
  if (!s.ok()) return s;
  return id;
}

absl::StatusOr<DmaBuffer> BlkDriver::AllocBuffer(size_t bytes) {
  return t_.dma().Allocate(bytes, 512, Access::kReadWrite);
}

void BlkDriver::FreeBuffer(const DmaBuffer& buffer) { t_.dma().Free(buffer); }

absl::Status BlkDriver::Submit(uint16_t queue, BlkOp op, uint64_t sector, const DmaBuffer* data, uint32_t len,
                               uint64_t token) {
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  SyncPiece p{op, sector, 0, 0, 0};
  switch (op) {
    case BlkOp::kRead:
    case BlkOp::kWrite:
    case BlkOp::kGetId:
      if (!data || len == 0 || len > data->size)
        return absl::InvalidArgumentError(absl::StrCat("blk: ", OpName(op), " of ", len, " bytes needs a buffer"));
      if (op != BlkOp::kGetId && len % kSector)
        return absl::InvalidArgumentError(absl::StrCat("blk: ", OpName(op), " of ", len, " bytes"));
      p.bytes = op == BlkOp::kGetId ? std::min(len, kIdBytes) : len;
      break;
    case BlkOp::kFlush:
      if (!info_.flush) return absl::UnimplementedError("blk: flush not negotiated");
      break;
    case BlkOp::kDiscard:
    case BlkOp::kWriteZeroes:
      if (!(op == BlkOp::kDiscard ? info_.discard : info_.write_zeroes))
        return absl::UnimplementedError(absl::StrCat("blk: ", OpName(op), " not negotiated"));
      if (len % kSector)
        return absl::InvalidArgumentError(absl::StrCat("blk: ", OpName(op), " of ", len, " bytes"));
      p.sectors = len / kSector;
      break;
  }
  return Enqueue(queue, p, data ? data->device_addr : 0, /*sync=*/false, -1, token, 0);
}

void BlkDriver::Kick(uint16_t queue) {
  if (ready_ && queue < queues_.size()) drv_.Kick(queue);
}

absl::StatusOr<size_t> BlkDriver::Reap(uint16_t queue, std::span<BlkCompletion> out, bool wait) {
  if (absl::Status s = CheckQueue(queue); !s.ok()) return s;
  QueueState& q = *queues_[queue];
  size_t n = 0;
  while (n < out.size() && q.ready_head < q.ready.size()) out[n++] = q.ready[q.ready_head++];
  if (q.ready_head == q.ready.size()) {
    q.ready.clear();
    q.ready_head = 0;
  }
  while (n < out.size()) {
    const bool block = wait && n == 0;
    if (block && q.async_in_flight == 0)
      return absl::FailedPreconditionError(absl::StrCat("blk: queue ", queue, ": nothing in flight to wait for"));
    Done d;
    absl::StatusOr<bool> got = PollOne(queue, block, &d);
    if (!got.ok()) {
      if (n > 0) break;  // the error shows again on the next call
      return got.status();
    }
    if (!*got) break;
    if (d.sync) {  // left over from a synchronous call that gave up
      if (d.chunk >= 0) q.chunk_busy[d.chunk] = 0;
      continue;
    }
    out[n++] = {d.token, d.status, d.len};
  }
  return n;
}

}  // namespace vioport
