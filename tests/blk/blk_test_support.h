// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the virtio-blk tests: a temporary backing file that the
// tests read behind the device's back, ring modes, a device + loopback +
// driver rig, and seeded data.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "vioport/backends/blk_device.h"
#include "vioport/guest/blk_driver.h"
#include "vioport/transports/loopback.h"

namespace vioport::blktest {

// A sparse file in $TEST_TMPDIR (or /tmp), removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(uint64_t size, const std::string& stem = "vioport-blk", std::string dir = "") {
    if (dir.empty()) {
      const char* env = std::getenv("TEST_TMPDIR");
      dir = env && *env ? env : "/tmp";
    }
    path_ = dir + "/" + stem + "-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    EXPECT_GE(fd_, 0) << path_;
    EXPECT_EQ(::ftruncate(fd_, static_cast<off_t>(size)), 0);
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

  // What the file holds, read behind the device's back.
  std::vector<uint8_t> Pread(uint64_t offset, size_t len) const {
    std::vector<uint8_t> out(len);
    size_t done = 0;
    while (done < len) {
      const ssize_t n = ::pread(fd_, out.data() + done, len - done, static_cast<off_t>(offset + done));
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    EXPECT_EQ(done, len) << "short pread at " << offset;
    return out;
  }
  void Pwrite(uint64_t offset, const std::vector<uint8_t>& data) const {
    ASSERT_EQ(::pwrite(fd_, data.data(), data.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(data.size()));
  }
  uint64_t Size() const {
    struct stat st;
    ::fstat(fd_, &st);
    return static_cast<uint64_t>(st.st_size);
  }
  // FNV-1a over the whole file.
  uint64_t Checksum() const {
    const std::vector<uint8_t> all = Pread(0, Size());
    uint64_t h = 1469598103934665603ull;
    for (uint8_t b : all) h = (h ^ b) * 1099511628211ull;
    return h;
  }
  // True if [offset, offset + len) is a hole in the file.
  bool IsHole(uint64_t offset) const {
    return ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE) == static_cast<off_t>(offset);
  }
  // Whether this file system punches holes that SEEK_HOLE reports.
  bool SupportsHoles() const {
    TempFile probe(0, "vioport-blk-probe", path_.substr(0, path_.rfind('/')));
    std::vector<uint8_t> data(1 << 16, 0x5a);
    probe.Pwrite(0, data);
    if (::fallocate(probe.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 16) != 0) return false;
    return probe.IsHole(0);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

inline std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

struct Mode {
  bool packed, indirect, event_idx, copy_only;
};

inline std::string ModeString(const Mode& m) {
  return std::string(m.packed ? "Packed" : "Split") + (m.indirect ? "Indirect" : "") + (m.event_idx ? "EventIdx" : "") +
         (m.copy_only ? "CopyOnly" : "Mapped") + (m.indirect ? "InlineIo" : "IoUring");
}
inline std::string ModeName(const ::testing::TestParamInfo<Mode>& i) { return ModeString(i.param); }
inline void PrintTo(const Mode& m, std::ostream* os) { *os << ModeString(m); }

inline uint64_t RingFeatures(const Mode& m) {
  uint64_t f = 0;
  if (m.packed) f |= feature::Bit(feature::kRingPacked);
  if (m.indirect) f |= feature::Bit(feature::kIndirectDesc);
  if (m.event_idx) f |= feature::Bit(feature::kEventIdx);
  return f;
}

inline std::vector<Mode> AllModes() {
  std::vector<Mode> out;
  for (bool packed : {false, true})
    for (bool copy : {false, true})
      for (bool extras : {false, true}) out.push_back({packed, extras, extras, copy});
  return out;
}

// A device counter by name (VirtioDevice::AppendCounters); a missing one fails the test.
inline uint64_t CounterOf(const VirtioDevice& dev, const std::string& name) {
  std::vector<std::pair<std::string, uint64_t>> c;
  dev.AppendCounters(&c);
  for (auto& [n, v] : c)
    if (n == name) return v;
  ADD_FAILURE() << "no counter " << name;
  return 0;
}

// Opens a BlkDevice on `file` behind a loopback transport in `mode`. Both
// I/O paths run in every suite: modes with the ring extras (indirect + event
// idx) issue reads and writes inline, the others through io_uring.
inline bool OpenOnLoopback(const TempFile& file, BlkOptions bo, const Mode& mode, std::shared_ptr<BlkDevice>* dev,
                           std::unique_ptr<LoopbackTransport>* t) {
  bo.path = file.path();
  if (bo.io == BlkOptions::Io::kAuto) bo.io = mode.indirect ? BlkOptions::Io::kInline : BlkOptions::Io::kIoUring;
  auto d = BlkDevice::Open(bo);
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return false;
  *dev = *d;
  LoopbackOptions lo;
  lo.copy_only = mode.copy_only;
  *t = std::make_unique<LoopbackTransport>(*dev, lo);
  return true;
}

// A BlkDevice on a temp file, the loopback transport, and a BlkDriver.
struct Rig {
  explicit Rig(uint64_t file_bytes = 16 << 20, const std::string& dir = "") : file(file_bytes, "vioport-blk", dir) {}

  // Opens the device with `bo` (path filled in) and initialises the driver.
  void Boot(BlkOptions bo = {}, Mode mode = {}, BlkDriverOptions dopt = {}) {
    ASSERT_TRUE(OpenOnLoopback(file, bo, mode, &dev, &t));
    drv = std::make_unique<BlkDriver>(*t);
    dopt.ring_features |= RingFeatures(mode);
    dopt.wait.timeout = absl::Seconds(10);
    opts = dopt;
    absl::Status s = drv->Init(dopt);
    ASSERT_TRUE(s.ok()) << s;
  }

  uint64_t Counter(const std::string& name) const { return CounterOf(*dev, name); }

  bool NeedsReset() { return t->GetStatus() & status::kDeviceNeedsReset; }

  TempFile file;
  std::shared_ptr<BlkDevice> dev;
  std::unique_ptr<LoopbackTransport> t;
  std::unique_ptr<BlkDriver> drv;
  BlkDriverOptions opts;
};

}  // namespace vioport::blktest
