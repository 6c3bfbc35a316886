// SPDX-License-Identifier: Apache-2.0
// virtio-blk wire format (§5.2): feature bits, config layout, request header,
// request types and status codes. One definition for the device side
// (backends/blk) and the driver side (guest/blk).
#pragma once

#include <cstddef>
#include <cstdint>

#include "vioport/core/spec.h"

namespace vioport::blk {

// §5.2.3 feature bits.
namespace feature {
inline constexpr unsigned kSizeMax = 1;
inline constexpr unsigned kSegMax = 2;
inline constexpr unsigned kGeometry = 4;
inline constexpr unsigned kRo = 5;
inline constexpr unsigned kBlkSize = 6;
inline constexpr unsigned kFlush = 9;
inline constexpr unsigned kTopology = 10;
inline constexpr unsigned kConfigWce = 11;
inline constexpr unsigned kMq = 12;
inline constexpr unsigned kDiscard = 13;
inline constexpr unsigned kWriteZeroes = 14;
}  // namespace feature

// Sectors are always 512 bytes on the wire, whatever blk_size says (§5.2.6).
inline constexpr uint32_t kSectorShift = 9;
inline constexpr uint32_t kSectorSize = 1u << kSectorShift;
inline constexpr uint32_t kIdBytes = 20;  // GET_ID: NUL-padded, no terminator at 20

// §5.2.6 request types.
namespace req {
inline constexpr uint32_t kIn = 0;
inline constexpr uint32_t kOut = 1;
inline constexpr uint32_t kFlush = 4;
inline constexpr uint32_t kGetId = 8;
inline constexpr uint32_t kGetLifetime = 10;
inline constexpr uint32_t kDiscard = 11;
inline constexpr uint32_t kWriteZeroes = 13;
inline constexpr uint32_t kSecureErase = 14;
}  // namespace req

// §5.2.6 status byte, the last device-writable byte of a request.
namespace status {
inline constexpr uint8_t kOk = 0;
inline constexpr uint8_t kIoErr = 1;
inline constexpr uint8_t kUnsupp = 2;
}  // namespace status

// The device-readable header every request starts with.
struct ReqHeader {
  le32 type;
  le32 reserved;  // legacy ioprio
  le64 sector;
};
static_assert(sizeof(ReqHeader) == 16);

// DISCARD / WRITE_ZEROES payload: one or more of these.
struct DiscardWriteZeroesSeg {
  le64 sector;
  le32 num_sectors;
  le32 flags;
};
static_assert(sizeof(DiscardWriteZeroesSeg) == 16);
inline constexpr uint32_t kSegFlagUnmap = 1;

// §5.2.4 device configuration layout, up to write_zeroes_may_unmap and its
// padding (secure erase and zoned fields follow; not offered).
struct Config {
  le64 capacity;  // 512-byte sectors
  le32 size_max;
  le32 seg_max;
  le16 geometry_cylinders;
  uint8_t geometry_heads;
  uint8_t geometry_sectors;
  le32 blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  le16 min_io_size;
  le32 opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  le16 num_queues;
  le32 max_discard_sectors;
  le32 max_discard_seg;
  le32 discard_sector_alignment;
  le32 max_write_zeroes_sectors;
  le32 max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
static_assert(offsetof(Config, size_max) == 8 && offsetof(Config, seg_max) == 12);
static_assert(offsetof(Config, geometry_cylinders) == 16 && offsetof(Config, blk_size) == 20);
static_assert(offsetof(Config, physical_block_exp) == 24 && offsetof(Config, opt_io_size) == 28);
static_assert(offsetof(Config, writeback) == 32 && offsetof(Config, num_queues) == 34);
static_assert(offsetof(Config, max_discard_sectors) == 36 && offsetof(Config, max_discard_seg) == 40);
static_assert(offsetof(Config, discard_sector_alignment) == 44);
static_assert(offsetof(Config, max_write_zeroes_sectors) == 48 && offsetof(Config, max_write_zeroes_seg) == 52);
static_assert(offsetof(Config, write_zeroes_may_unmap) == 56);
// The part of the config space this device exposes (max_secure_erase_sectors starts at 60).
inline constexpr uint32_t kConfigSize = 60;

}  // namespace vioport::blk
