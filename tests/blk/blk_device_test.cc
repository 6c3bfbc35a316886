// SPDX-License-Identifier: Apache-2.0
// BlkDevice against requests written by hand with the raw driver queue: the
// shapes a well-behaved driver never sends (malformed, misaligned, unknown
// types and flags, headers split anywhere), the config layout, Open errors.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <map>

#include "blk_test_support.h"
#include "vioport/guest/wait.h"

namespace vioport::blktest {
namespace {

constexpr uint32_t kSector = 512;

struct Buf {
  std::vector<uint8_t> bytes;
  bool writable;
};

std::vector<uint8_t> Header(uint32_t type, uint64_t sector) {
  blk::ReqHeader h;
  h.type = type;
  h.reserved = 0;
  h.sector = sector;
  std::vector<uint8_t> out(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

std::vector<uint8_t> RangeSeg(uint64_t sector, uint32_t sectors, uint32_t flags) {
  blk::DiscardWriteZeroesSeg s;
  s.sector = sector;
  s.num_sectors = sectors;
  s.flags = flags;
  std::vector<uint8_t> out(sizeof s);
  std::memcpy(out.data(), &s, sizeof s);
  return out;
}

std::vector<uint8_t> Cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<uint8_t> Slice(const std::vector<uint8_t>& v, size_t from, size_t to) {
  return {v.begin() + static_cast<ptrdiff_t>(from), v.begin() + static_cast<ptrdiff_t>(to)};
}

// A driver that builds each request buffer by buffer on the raw queue.
class RawBlk {
 public:
  RawBlk(const TempFile& file, BlkOptions bo, Mode mode) {
    if (!OpenOnLoopback(file, bo, mode, &dev, &t)) return;
    drv = std::make_unique<VirtioDriver>(*t);
    DriverOptions o;
    o.wanted_features = RingFeatures(mode) | feature::Bit(blk::feature::kFlush) |
                        feature::Bit(blk::feature::kDiscard) | feature::Bit(blk::feature::kWriteZeroes) |
                        feature::Bit(blk::feature::kRo);
    o.queue_size = 64;
    absl::Status s = drv->Init(o);
    EXPECT_TRUE(s.ok()) << s;
  }

  struct Result {
    bool used = false;  // false: the device never completed it
    uint32_t len = 0;
    uint8_t status = 0xff;
    std::vector<uint8_t> written;  // every writable byte, concatenated
  };

  Result Send(const std::vector<Buf>& bufs) {
    std::vector<DmaBuffer> dma;
    std::vector<DriverBuffer> ring;
    for (const Buf& b : bufs) {
      DmaBuffer m = *t->dma().Allocate(std::max<size_t>(b.bytes.size(), 1), 8,
                                       b.writable ? Access::kWrite : Access::kRead);
      std::memcpy(m.host, b.bytes.data(), b.bytes.size());
      dma.push_back(m);
      ring.push_back({m.device_addr, static_cast<uint32_t>(b.bytes.size()), b.writable});
    }
    Result r;
    DriverQueue& q = drv->queue(0);
    EXPECT_EQ(q.Add(ring, 99), AddStatus::kOk);
    drv->Kick(0);
    uint64_t token;
    WaitPolicy p;
    p.timeout = absl::Seconds(5);
    const WaitResult w = WaitUsed(*drv, q, p, &token, &r.len);
    r.used = w == WaitResult::kUsed;
    if (r.used) {
      EXPECT_EQ(token, 99u);
      for (size_t i = 0; i < bufs.size(); ++i)
        if (bufs[i].writable) r.written.insert(r.written.end(), dma[i].host, dma[i].host + bufs[i].bytes.size());
      if (!r.written.empty()) r.status = r.written.back();
    } else {
      EXPECT_EQ(w, WaitResult::kNeedsReset) << WaitResultName(w);
    }
    for (auto& m : dma) t->dma().Free(m);
    return r;
  }

  bool NeedsReset() { return t->GetStatus() & status::kDeviceNeedsReset; }
  uint64_t Counter(const std::string& name) const { return CounterOf(*dev, name); }

  std::shared_ptr<BlkDevice> dev;
  std::unique_ptr<LoopbackTransport> t;
  std::unique_ptr<VirtioDriver> drv;
};

class BlkRaw : public ::testing::TestWithParam<Mode> {};

TEST_P(BlkRaw, HeaderDataAndStatusMaySplitAnywhere) {
  TempFile file(1 << 20);
  RawBlk raw(file, {}, GetParam());
  const std::vector<uint8_t> data = RandomBytes(1024, 17);
  const std::vector<uint8_t> h = Header(blk::req::kOut, 40);
  // Header in three pieces, its last 4 bytes sharing a buffer with data.
  RawBlk::Result w = raw.Send({{Slice(h, 0, 5), false},
                               {Slice(h, 5, 12), false},
                               {Cat(Slice(h, 12, 16), Slice(data, 0, 300)), false},
                               {Slice(data, 300, 1024), false},
                               {{0xEE}, true}});
  ASSERT_TRUE(w.used);
  EXPECT_EQ(w.status, blk::status::kOk);
  EXPECT_EQ(w.len, 1u);
  EXPECT_EQ(file.Pread(40 * kSector, 1024), data);
  // IN: the status byte shares its buffer with the end of the data.
  RawBlk::Result r = raw.Send({{Slice(Header(blk::req::kIn, 40), 0, 9), false},
                               {Slice(Header(blk::req::kIn, 40), 9, 16), false},
                               {std::vector<uint8_t>(700, 0xEE), true},
                               {std::vector<uint8_t>(325, 0xEE), true}});
  ASSERT_TRUE(r.used);
  EXPECT_EQ(r.status, blk::status::kOk);
  EXPECT_EQ(r.len, 1025u);
  EXPECT_EQ(Slice(r.written, 0, 1024), data);
  // GET_ID: 20 bytes, no terminator when the serial fills them.
  RawBlk::Result id = raw.Send({{Header(blk::req::kGetId, 0), false}, {std::vector<uint8_t>(21, 0xEE), true}});
  ASSERT_TRUE(id.used);
  EXPECT_EQ(id.len, 21u);
  EXPECT_EQ(id.status, blk::status::kOk);
  const std::string base = file.path().substr(file.path().rfind('/') + 1);
  std::string want = base.substr(0, 20);
  want.resize(20, '\0');
  EXPECT_EQ(std::string(id.written.begin(), id.written.begin() + 20), want);
  EXPECT_FALSE(raw.NeedsReset());
}

TEST_P(BlkRaw, StatusCodesForUnsupportedAndInvalidRequests) {
  TempFile file(1 << 20);
  file.Pwrite(0, RandomBytes(1 << 20, 3));
  const uint64_t before = file.Checksum();
  RawBlk raw(file, {}, GetParam());
  auto status_of = [&](std::vector<Buf> bufs) {
    RawBlk::Result r = raw.Send(bufs);
    EXPECT_TRUE(r.used);
    EXPECT_EQ(r.len, 1u);
    return r.status;
  };
  const Buf st{{0xEE}, true};
  // Unknown and legacy types.
  for (uint32_t type : {2u, 3u, 5u, blk::req::kGetLifetime, blk::req::kSecureErase, 0xdeadbeefu})
    EXPECT_EQ(status_of({{Header(type, 0), false}, st}), blk::status::kUnsupp) << type;
  // §5.2.6.2: unmap on DISCARD, unknown flags on WRITE_ZEROES.
  EXPECT_EQ(status_of({{Header(blk::req::kDiscard, 0), false}, {RangeSeg(0, 8, blk::kSegFlagUnmap), false}, st}),
            blk::status::kUnsupp);
  EXPECT_EQ(status_of({{Header(blk::req::kWriteZeroes, 0), false}, {RangeSeg(0, 8, 2), false}, st}),
            blk::status::kUnsupp);
  EXPECT_EQ(status_of({{Header(blk::req::kDiscard, 0), false}, {RangeSeg(0, 8, 0x80000000u), false}, st}),
            blk::status::kUnsupp);
  // More segments than max_discard_seg, or a partial segment.
  EXPECT_EQ(status_of({{Header(blk::req::kDiscard, 0), false},
                       {Cat(RangeSeg(0, 8, 0), RangeSeg(64, 8, 0)), false},
                       st}),
            blk::status::kIoErr);
  EXPECT_EQ(status_of({{Header(blk::req::kWriteZeroes, 0), false}, {Slice(RangeSeg(0, 8, 0), 0, 12), false}, st}),
            blk::status::kIoErr);
  // Not a multiple of 512, or beyond the capacity.
  EXPECT_EQ(status_of({{Header(blk::req::kOut, 0), false}, {RandomBytes(100, 1), false}, st}),
            blk::status::kIoErr);
  EXPECT_EQ(status_of({{Header(blk::req::kOut, 2047), false}, {RandomBytes(1024, 1), false}, st}),
            blk::status::kIoErr);
  EXPECT_EQ(status_of({{Header(blk::req::kDiscard, 0), false}, {RangeSeg(2040, 9, 0), false}, st}),
            blk::status::kIoErr);
  RawBlk::Result in = raw.Send({{Header(blk::req::kIn, 0), false}, {std::vector<uint8_t>(101, 0xEE), true}});
  ASSERT_TRUE(in.used);
  EXPECT_EQ(in.status, blk::status::kIoErr);
  EXPECT_EQ(file.Checksum(), before);
  EXPECT_EQ(raw.Counter("bad_requests"), 0u);
  EXPECT_FALSE(raw.NeedsReset());
}

TEST_P(BlkRaw, ReadOnlyDeviceFailsEveryWriteAndWritesNothing) {
  TempFile file(1 << 20);
  file.Pwrite(0, RandomBytes(1 << 20, 4));
  const uint64_t before = file.Checksum();
  BlkOptions bo;
  bo.read_only = true;
  RawBlk raw(file, bo, GetParam());
  const Buf st{{0xEE}, true};
  std::vector<std::vector<Buf>> writes = {
      {{Header(blk::req::kOut, 8), false}, {RandomBytes(4096, 9), false}, st},
      {{Header(blk::req::kDiscard, 0), false}, {RangeSeg(0, 2048, 0), false}, st},
      {{Header(blk::req::kWriteZeroes, 0), false}, {RangeSeg(0, 2048, 0), false}, st},
      {{Header(blk::req::kWriteZeroes, 0), false}, {RangeSeg(0, 2048, blk::kSegFlagUnmap), false}, st},
  };
  for (const auto& w : writes) {
    RawBlk::Result r = raw.Send(w);
    ASSERT_TRUE(r.used);
    EXPECT_EQ(r.status, blk::status::kIoErr);
  }
  EXPECT_EQ(file.Checksum(), before);
  EXPECT_EQ(raw.Counter("errors"), writes.size());
  EXPECT_FALSE(raw.NeedsReset());
}

// Requests with no room for the header or the status, or data in the wrong
// direction: the device cannot answer them, fails the queue (NEEDS_RESET),
// and writes nothing. A re-initialised driver then works.
TEST_P(BlkRaw, MalformedRequestsNeedResetAndWriteNothing) {
  const Buf st{{0xEE}, true};
  const std::vector<std::pair<const char*, std::vector<Buf>>> cases = {
      {"8-byte header", {{Slice(Header(blk::req::kOut, 0), 0, 8), false}, st}},
      {"15-byte header in pieces",
       {{Slice(Header(blk::req::kOut, 0), 0, 8), false}, {Slice(Header(blk::req::kOut, 0), 8, 15), false}, st}},
      {"no status byte", {{Header(blk::req::kOut, 0), false}, {RandomBytes(512, 1), false}}},
      {"OUT with writable data",
       {{Header(blk::req::kOut, 0), false}, {RandomBytes(512, 1), false}, {std::vector<uint8_t>(512), true}, st}},
      {"IN with readable data",
       {{Header(blk::req::kIn, 0), false}, {RandomBytes(512, 1), false}, {std::vector<uint8_t>(513), true}}},
      {"header only, all writable", {{std::vector<uint8_t>(17), true}}},
  };
  for (const auto& [name, bufs] : cases) {
    SCOPED_TRACE(name);
    TempFile file(1 << 20);
    file.Pwrite(0, RandomBytes(1 << 20, 5));
    const uint64_t before = file.Checksum();
    RawBlk raw(file, {}, GetParam());
    RawBlk::Result r = raw.Send(bufs);
    EXPECT_FALSE(r.used);
    EXPECT_TRUE(raw.NeedsReset());
    EXPECT_NE(raw.t->controller().last_error().find(RingErrorName(RingError::kBadRequest)), std::string::npos)
        << raw.t->controller().last_error();
    EXPECT_EQ(raw.Counter("bad_requests"), 1u);
    EXPECT_EQ(raw.Counter("bytes_written"), 0u);
    EXPECT_EQ(file.Checksum(), before);
    // Recovery: reset and initialise again, then I/O works.
    BlkDriver d(*raw.t);
    BlkDriverOptions o;
    o.ring_features = RingFeatures(GetParam());
    ASSERT_TRUE(d.Init(o).ok());
    const std::vector<uint8_t> data = RandomBytes(4096, 6);
    ASSERT_TRUE(d.Write(0, data).ok());
    EXPECT_EQ(file.Pread(0, 4096), data);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, BlkRaw,
                         ::testing::Values(Mode{false, false, false, false}, Mode{false, true, true, true},
                                           Mode{true, false, false, false}, Mode{true, true, true, true}),
                         ModeName);

TEST(BlkConfig, LayoutAndFeatures) {
  TempFile file(3 << 20);
  BlkOptions bo;
  bo.path = file.path();
  bo.num_queues = 3;
  bo.queue_size = 128;
  bo.serial = "01234567890123456789";  // exactly 20
  bo.seg_max = 60;
  bo.size_max = 65536;
  auto dev = BlkDevice::Open(bo);
  ASSERT_TRUE(dev.ok()) << dev.status();
  const uint64_t f = (*dev)->device_features();
  namespace bf = blk::feature;
  for (unsigned bit : {bf::kSizeMax, bf::kSegMax, bf::kBlkSize, bf::kFlush, bf::kMq, bf::kDiscard, bf::kWriteZeroes})
    EXPECT_TRUE(feature::Has(f, bit)) << bit;
  EXPECT_FALSE(feature::Has(f, bf::kRo));
  EXPECT_TRUE(feature::Has(f, feature::kRingPacked));
  EXPECT_EQ((*dev)->max_queue_size(), 128);
  EXPECT_EQ((*dev)->config_size(), 60u);
  uint8_t cfg[60];
  (*dev)->ReadConfig(0, cfg);
  auto le = [&](int off, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | cfg[off + i];
    return v;
  };
  EXPECT_EQ(le(0, 8), (3u << 20) / 512);
  EXPECT_EQ(le(8, 4), 65536u);
  EXPECT_EQ(le(12, 4), 60u);
  EXPECT_EQ(le(20, 4), 512u);
  EXPECT_EQ(le(34, 2), 3u);
  EXPECT_GT(le(36, 4), 0u);  // max_discard_sectors
  EXPECT_EQ(le(40, 4), 1u);  // max_discard_seg
  EXPECT_GT(le(44, 4), 0u);  // discard_sector_alignment
  EXPECT_GT(le(48, 4), 0u);  // max_write_zeroes_sectors
  EXPECT_EQ(le(52, 4), 1u);  // max_write_zeroes_seg
  EXPECT_EQ(le(56, 1), 1u);  // write_zeroes_may_unmap

  // Through a driver: the same numbers, and the 20-byte serial in full.
  LoopbackTransport t(*dev);
  BlkDriver d(t);
  ASSERT_TRUE(d.Init({}).ok());
  EXPECT_EQ(d.info().num_queues, 3);
  EXPECT_EQ(d.info().capacity_sectors, (3u << 20) / 512);
  EXPECT_EQ(d.info().size_max, 65536u);
  EXPECT_EQ(d.info().seg_max, 60u);
  EXPECT_EQ(d.info().blk_size, 512u);
  EXPECT_EQ(d.driver().queue(0).size(), 128u);
  auto id = d.GetId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "01234567890123456789");

  // One queue: no MQ; read-only: RO and no DISCARD / WRITE_ZEROES.
  bo.num_queues = 1;
  bo.read_only = true;
  bo.size_max = 0;
  bo.seg_max = 0;
  auto ro = BlkDevice::Open(bo);
  ASSERT_TRUE(ro.ok()) << ro.status();
  const uint64_t rf = (*ro)->device_features();
  EXPECT_FALSE(feature::Has(rf, bf::kMq));
  EXPECT_TRUE(feature::Has(rf, bf::kRo));
  EXPECT_FALSE(feature::Has(rf, bf::kDiscard));
  EXPECT_FALSE(feature::Has(rf, bf::kWriteZeroes));
  EXPECT_FALSE(feature::Has(rf, bf::kSizeMax));
  EXPECT_FALSE(feature::Has(rf, bf::kSegMax));
}

TEST(BlkOpen, ErrorsNameThePath) {
  BlkOptions bo;
  bo.path = "/nonexistent/vioport/disk.img";
  auto missing = BlkDevice::Open(bo);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(bo.path), absl::string_view::npos) << missing.status();
  EXPECT_NE(missing.status().message().find("No such file"), absl::string_view::npos) << missing.status();

  bo.path = "/dev/null";  // a character device
  auto chr = BlkDevice::Open(bo);
  EXPECT_EQ(chr.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chr.status().message().find("/dev/null"), absl::string_view::npos) << chr.status();

  TempFile file(1 << 20);
  bo.path = file.path();
  bo.serial = std::string(21, 'x');
  EXPECT_EQ(BlkDevice::Open(bo).status().code(), absl::StatusCode::kInvalidArgument);
  bo.serial.clear();
  bo.queue_size = 0;
  EXPECT_EQ(BlkDevice::Open(bo).status().code(), absl::StatusCode::kInvalidArgument);
  bo.queue_size = 256;
  bo.num_queues = 0;
  EXPECT_EQ(BlkDevice::Open(bo).status().code(), absl::StatusCode::kInvalidArgument);
  bo.num_queues = 1;
  auto ok = BlkDevice::Open(bo);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->capacity_sectors(), 2048u);
  EXPECT_GE((*ok)->event_fd(), 0);
}

TEST(BlkCounters, NamedAndCounted) {
  Rig rig(1 << 20);
  rig.Boot();
  BlkDriver& d = *rig.drv;
  const std::vector<uint8_t> data = RandomBytes(8192, 1);
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(d.Write(0, data).ok());
  ASSERT_TRUE(d.Read(0, got).ok());
  ASSERT_TRUE(d.Flush().ok());
  ASSERT_TRUE(d.Discard(0, 8).ok());
  ASSERT_TRUE(d.WriteZeroes(8, 8, false).ok());
  ASSERT_TRUE(d.GetId().ok());
  EXPECT_EQ(d.Read(4096, got).code(), absl::StatusCode::kDataLoss);
  std::vector<std::pair<std::string, uint64_t>> c;
  rig.dev->AppendCounters(&c);
  std::map<std::string, uint64_t> m(c.begin(), c.end());
  EXPECT_EQ(m["reads"], 2u);
  EXPECT_EQ(m["writes"], 1u);
  EXPECT_EQ(m["flushes"], 1u);
  EXPECT_EQ(m["discards"], 1u);
  EXPECT_EQ(m["write_zeroes"], 1u);
  EXPECT_EQ(m["bytes_read"], 4096u);
  EXPECT_EQ(m["bytes_written"], 8192u);
  EXPECT_EQ(m["errors"], 1u);
  EXPECT_EQ(m["bad_requests"], 0u);
  EXPECT_EQ(m.count("get_ids"), 1u);
  EXPECT_EQ(m.count("resizes"), 1u);
  EXPECT_EQ(m["resizes"], 0u);
}

}  // namespace
}  // namespace vioport::blktest
