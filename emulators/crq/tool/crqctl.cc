// SPDX-License-Identifier: Apache-2.0
// crqctl: talks to a running crqd over its control socket (one command per
// connection, answered with text and a last line "ok" or "error: ...").
#include "vioport/core/control_client.h"

namespace {

const char kUsage[] = R"(crqctl: control a running crqd (the CRQ hypervisor emulator).

usage: crqctl --control PATH COMMAND [ARGS]

commands (PID, UNIT, N: decimal or 0x-hex):
  fail PID UNIT          pretend PID failed: FF 01 to the partner of (PID, UNIT)
  migrate PID UNIT N     FF 06 into (PID, UNIT)'s queue, queue disabled; its
                         H_ENABLE_CRQ answers H_IN_PROGRESS N times, then succeeds
  free-busy PID UNIT N   the next N H_FREE_CRQ on (PID, UNIT) return H_BUSY
  drop PID UNIT N        the next N messages to (PID, UNIT) are lost (sender: H_SUCCESS)
  full PID UNIT N        the next N messages to (PID, UNIT) answer H_DROPPED, as
                         if its queue were full (nothing lands)
  event PID UNIT REASON  post transport event FF REASON into (PID, UNIT)'s queue
  delay NS [busy|sleep]  add NS nanoseconds to every hypercall (0 = none)
  stats                  per-hypercall counters, messages, events, interrupts
  partitions             the partition ids connected now

Exit status: 0 if crqd answered ok, 1 if it answered an error, 2 if it could
not be reached.
)";

}  // namespace

int main(int argc, char** argv) { return vioport::RunControlClient(argc, argv, "crqctl", "crqd", kUsage); }
