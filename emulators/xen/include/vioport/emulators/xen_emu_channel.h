// SPDX-License-Identifier: Apache-2.0
// The emulator's implementation of the Xen transport's channel port
// (xen::XenChannel): this process as a domain of xenemud. Registered as the
// channel "emu" (emu:SOCKET in vios's and vioguest's options).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {

// Connects to `xenemud --domains options.address` as domain options.self.
absl::StatusOr<std::unique_ptr<XenChannel>> OpenEmulatorChannel(const ChannelOptions& options);

}  // namespace vioport::xen

namespace vioport {
// Registers OpenEmulatorChannel as the Xen channel "emu".
void RegisterXenEmulatorChannel();
}  // namespace vioport
