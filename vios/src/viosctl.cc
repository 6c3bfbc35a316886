// SPDX-License-Identifier: Apache-2.0
// viosctl: talks to a running vios over its control socket.
#include "vioport/core/control_client.h"

namespace {

const char kUsage[] = R"(viosctl: control a running vios.

usage: viosctl --control PATH COMMAND [ARG]

commands:
  list                 devices, their transports, guest connection and status
  stats [ID]           counters of one device (or all): requests, bytes, errors,
                       transport counters, the last error
  add DEVICE-SPEC      create a device, e.g. add blk,id=d1,path=/var/lib/d1.img
  attach ATTACH-SPEC   serve a device over a transport, as vios --attach takes
                       it (vios --help lists the transports and their options)
  remove ID            drop the guest (device reset) and delete the device

Exit status: 0 if vios answered ok, 1 if it answered an error, 2 if it could
not be reached.
)";

}  // namespace

int main(int argc, char** argv) { return vioport::RunControlClient(argc, argv, "viosctl", "vios", kUsage); }
