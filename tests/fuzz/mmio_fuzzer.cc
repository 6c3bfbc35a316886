// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the shm transport's device side at the register
// level: a hostile guest's REG_WRITE stream (any offset, width, value, in any
// order), QueueNotify doorbells and its own scribbles on guest memory, all
// against MmioMirror + DeviceController + an echo device with two queues.
//
// Input: a sequence of 8-byte ops {kind u8, size u8, offset u16, value u32}:
//   kind % 4 == 0  REG_WRITE(offset & 0x1ff, size, value) via MmioMirror (registers and configuration)
//                  (offsets >= 0x100 are config writes, as MmioMirror::Write takes them)
//   kind % 4 == 1  QueueNotify(value & 0xffff)
//   kind % 4 == 2  guest memory poke: 4 bytes `value` at offset*4 in the region
//   kind % 4 == 3  register read of every control register (mirror refresh)
// Properties checked besides ASan/UBSan: reads never crash, the magic and
// version never change, and the device never writes outside guest memory
// (the region has guard bytes on both sides, checked at the end).
#include <cstdint>
#include <cstring>
#include <vector>

#include "vioport/core/mmio.h"
#include "vioport/core/device_controller.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/shm_protocol.h"

namespace {

using namespace vioport;

struct NullSink final : InterruptSink {
  void QueueInterrupt(uint16_t) override {}
  void ConfigInterrupt() override {}
};

constexpr size_t kGuard = 4096;
constexpr uint64_t kBase = shm::kRegisterPageSize;
constexpr size_t kMem = 256 * 1024;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> backing(kGuard + kMem + kGuard, 0xEE);
  uint8_t* mem = backing.data() + kGuard;
  std::memset(mem, 0, kMem);
  auto region = std::make_shared<RegionMemory>();
  if (!region->AddRegion({kBase, kMem, mem, Access::kReadWrite}).ok()) __builtin_trap();
  testing::EchoOptions eo;
  eo.num_queues = 2;
  eo.max_queue_size = 64;
  auto dev = std::make_shared<testing::EchoDevice>(eo);
  {
    DeviceController ctl(dev, region, std::make_shared<NullSink>());
    const uint32_t version = size > 0 && (data[0] & 1) ? 1 : 2;
    std::vector<uint8_t> page(mmio::kPageSize);
    mmio::MmioMirror mirror(ctl, version, page.data());
    mmio::MmioRegisters& regs = mirror.registers();
    for (size_t i = 1; i + 8 <= size; i += 8) {
      const uint8_t kind = data[i];
      const uint8_t width = data[i + 1];
      uint16_t off;
      uint32_t value;
      std::memcpy(&off, data + i + 2, 2);
      std::memcpy(&value, data + i + 4, 4);
      switch (kind % 4) {
        case 0: {
          (void)mirror.Write(off & 0x1ff, width % 5, value);
          break;
        }
        case 1: ctl.NotifyQueue(static_cast<uint16_t>(value)); break;
        case 2: {
          const size_t at = (static_cast<size_t>(off) * 4) % (kMem - 4);
          std::memcpy(mem + at, &value, 4);
          break;
        }
        default:
          for (uint32_t r = 0; r < mmio::kConfigOffset; r += 4) (void)regs.Read(r);
          break;
      }
      if (regs.Read(mmio::reg::kMagic) != mmio::kMagicValue || regs.Read(mmio::reg::kVersion) != version)
        __builtin_trap();
    }
  }  // the controller resets the device here
  for (size_t i = 0; i < kGuard; ++i)
    if (backing[i] != 0xEE || backing[kGuard + kMem + i] != 0xEE) __builtin_trap();
  return 0;
}
