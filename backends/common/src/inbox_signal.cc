// SPDX-License-Identifier: Apache-2.0
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "vioport/backends/port_inbox.h"

namespace vioport {

InboxSignal::InboxSignal() { efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

InboxSignal::~InboxSignal() {
  if (efd_ >= 0) ::close(efd_);
}

void InboxSignal::Signal() {
  const uint64_t one = 1;
  while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void InboxSignal::Drain() {
  uint64_t v;
  while (::read(efd_, &v, sizeof v) < 0 && errno == EINTR) {
  }
}

}  // namespace vioport
