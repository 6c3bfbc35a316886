// SPDX-License-Identifier: Apache-2.0
// virtio-console wire format (§5.3), one port without MULTIPORT: feature bits,
// config layout and queue numbers. One definition for the device side
// (backends/console) and the driver side (guest/console).
#pragma once

#include <cstdint>

#include "vioport/core/spec.h"

namespace vioport {

namespace console {
// §5.3.3 feature bits.
inline constexpr unsigned kFeatureSize = 0;
inline constexpr unsigned kFeatureMultiport = 1;
inline constexpr unsigned kFeatureEmergWrite = 2;

// §5.3.4 configuration layout (little-endian, VERSION_1).
struct Config {
  le16 cols;
  le16 rows;
  le32 max_nr_ports;
  le32 emerg_wr;
};
static_assert(sizeof(Config) == 12);

inline constexpr uint16_t kReceiveQueue = 0;   // device -> driver (port 0 receiveq)
inline constexpr uint16_t kTransmitQueue = 1;  // driver -> device (port 0 transmitq)
}  // namespace console

}  // namespace vioport
