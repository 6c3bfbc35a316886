// SPDX-License-Identifier: Apache-2.0
// Types every part of the Xen emulator shares.
#pragma once

#include <cstdint>

namespace vioport::xen {

using DomId = uint16_t;
inline constexpr DomId kDomidSelf = 0x7FF0;  // DOMID_SELF (xen/include/public/xen.h)

}  // namespace vioport::xen
