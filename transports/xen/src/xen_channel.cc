// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/xen_channel.h"

#include "absl/strings/str_cat.h"

namespace vioport::xen {

const char* GntstName(int16_t s) {
  switch (s) {
    case gntst::kOkay: return "GNTST_okay";
    case gntst::kGeneralError: return "GNTST_general_error";
    case gntst::kBadDomain: return "GNTST_bad_domain";
    case gntst::kBadGntref: return "GNTST_bad_gntref";
    case gntst::kBadHandle: return "GNTST_bad_handle";
    case gntst::kBadVirtAddr: return "GNTST_bad_virt_addr";
    case gntst::kBadDevAddr: return "GNTST_bad_dev_addr";
    case gntst::kNoDeviceSpace: return "GNTST_no_device_space";
    case gntst::kPermissionDenied: return "GNTST_permission_denied";
    case gntst::kBadPage: return "GNTST_bad_page";
    case gntst::kBadCopyArg: return "GNTST_bad_copy_arg";
    case gntst::kAddressTooBig: return "GNTST_address_too_big";
    case gntst::kEagain: return "GNTST_eagain";
    case gntst::kNoSpace: return "GNTST_no_space";
    default: return "GNTST_unknown";
  }
}

absl::StatusOr<std::unique_ptr<XenChannel>> OpenChannel(const std::string& spec, ChannelOptions options) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  if (colon != std::string::npos) options.address = spec.substr(colon + 1);
  const ChannelFactory* f = XenChannels::Find(name);
  if (!f || (colon != std::string::npos && options.address.empty()))
    return absl::InvalidArgumentError(
        absl::StrCat("channel '", spec, "' is not one of this build's: ", XenChannels::Names(),
                     " (emu:SOCKET joins the xenemud emulator, xen uses real Xen)"));
  return (*f)(options);
}

void RegisterLibxenChannel() {
  XenChannels::Add("xen", [](const ChannelOptions&) { return OpenLibxenChannel(); });
}

}  // namespace vioport::xen
