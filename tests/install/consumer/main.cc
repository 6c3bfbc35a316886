// SPDX-License-Identifier: Apache-2.0
// Outside-project check: one request through an installed vioport's
// driver-side and device-side split queues over a RegionMemory.
#include <cstdio>
#include <cstring>
#include <vector>

#include "vioport/core/device_queue.h"
#include "vioport/core/driver_queue.h"

namespace {
class Bump final : public vioport::DmaAllocator {
 public:
  Bump(uint8_t* host, uint64_t base, size_t size) : host_(host), base_(base), size_(size) {}
  absl::StatusOr<vioport::DmaBuffer> Allocate(size_t size, size_t align, vioport::Access) override {
    used_ = (used_ + align - 1) / align * align;
    if (used_ + size > size_) return absl::ResourceExhaustedError("full");
    vioport::DmaBuffer b{host_ + used_, base_ + used_, size};
    used_ += size;
    return b;
  }
  void Free(const vioport::DmaBuffer&) override {}

 private:
  uint8_t* host_;
  uint64_t base_;
  size_t size_, used_ = 0;
};
}  // namespace

int main(int argc, char** argv) {
  const char* how = argc > 1 ? argv[1] : "?";
  std::vector<uint8_t> ram(1 << 20);
  const uint64_t base = 0x80000000;
  Bump dma(ram.data(), base, ram.size());
  vioport::RegionMemory mem;
  if (!mem.AddRegion({base, ram.size(), ram.data()}).ok()) return 1;
  const uint64_t f = vioport::feature::Bit(vioport::feature::kVersion1);
  auto drv = vioport::DriverQueue::Create({0, 8, f, 8}, dma);
  if (!drv.ok()) return 1;
  std::unique_ptr<vioport::DeviceQueue> dev;
  vioport::QueueConfig cfg{0, 8, (*drv)->desc_addr(), (*drv)->driver_addr(), (*drv)->device_addr(), f};
  if (vioport::DeviceQueue::Create(cfg, &mem, nullptr, &dev) != vioport::RingError::kNone) return 1;
  vioport::DmaBuffer b = *dma.Allocate(16, 8, vioport::Access::kReadWrite);
  std::memcpy(b.host, "hello", 6);
  vioport::DriverBuffer bufs[2] = {{b.device_addr, 6, false}, {b.device_addr + 8, 6, true}};
  (*drv)->Add(bufs, 7);
  (*drv)->KickPrepare();
  vioport::DescriptorChain c;
  if (dev->Pop(c) != vioport::PopStatus::kChain) return 1;
  char msg[6];
  c.Read(0, msg, 6);
  c.Write(0, msg, 6);
  dev->AddUsed(std::move(c), 6);
  dev->Publish();
  uint64_t tok;
  uint32_t len;
  if ((*drv)->GetUsed(&tok, &len) != vioport::UsedStatus::kUsed || tok != 7 || len != 6 ||
      std::memcmp(b.host + 8, "hello", 6) != 0) {
    std::printf("consumer: %s FAILED\n", how);
    return 1;
  }
  std::printf("consumer: %s ok\n", how);
  return 0;
}
