// SPDX-License-Identifier: Apache-2.0
// The transports the conformance suite runs against: one line each. A new
// transport writes its rig (tests/support/src/transport_rig.cc: its --attach
// options, its guest's channel, its emulator, its traits) and adds its line.
#include "conformance.h"

namespace vioport::conformance {

VIOPORT_CONFORMANCE(Loopback, testing::LoopbackRig());
VIOPORT_CONFORMANCE(Shm, testing::ShmRig());
VIOPORT_CONFORMANCE(VhostUser, testing::VhostUserRig());
#ifdef VIOPORT_RIG_EMULATORS
VIOPORT_CONFORMANCE(Crq, testing::CrqRig());
VIOPORT_CONFORMANCE(Xen, testing::XenRig());
#endif

}  // namespace vioport::conformance
