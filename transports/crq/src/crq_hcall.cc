// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/crq_hcall.h"

namespace vioport::crq {

std::string_view HcallName(uint64_t opcode) {
  switch (opcode) {
    case kHGetTce: return "H_GET_TCE";
    case kHPutTce: return "H_PUT_TCE";
    case kHRegCrq: return "H_REG_CRQ";
    case kHFreeCrq: return "H_FREE_CRQ";
    case kHVioSignal: return "H_VIO_SIGNAL";
    case kHSendCrq: return "H_SEND_CRQ";
    case kHCopyRdma: return "H_COPY_RDMA";
    case kHStuffTce: return "H_STUFF_TCE";
    case kHPutTceIndirect: return "H_PUT_TCE_INDIRECT";
    case kHEnableCrq: return "H_ENABLE_CRQ";
    default: return "?";
  }
}

std::string_view ReturnCodeName(int64_t rc) {
  switch (rc) {
    case kHSuccess: return "H_SUCCESS";
    case kHBusy: return "H_BUSY";
    case kHClosed: return "H_CLOSED";
    case kHNotAvailable: return "H_NOT_AVAILABLE";
    case kHConstrained: return "H_CONSTRAINED";
    case kHPartial: return "H_PARTIAL";
    case kHInProgress: return "H_IN_PROGRESS";
    case kHLongBusyOrder1Msec: return "H_LONG_BUSY_ORDER_1_MSEC";
    case kHLongBusyOrder10Msec: return "H_LONG_BUSY_ORDER_10_MSEC";
    case kHLongBusyOrder100Msec: return "H_LONG_BUSY_ORDER_100_MSEC";
    case kHLongBusyOrder1Sec: return "H_LONG_BUSY_ORDER_1_SEC";
    case kHLongBusyOrder10Sec: return "H_LONG_BUSY_ORDER_10_SEC";
    case kHLongBusyOrder100Sec: return "H_LONG_BUSY_ORDER_100_SEC";
    case kHHardware: return "H_HARDWARE";
    case kHFunction: return "H_FUNCTION";
    case kHPrivilege: return "H_PRIVILEGE";
    case kHParameter: return "H_PARAMETER";
    case kHNotFound: return "H_NOT_FOUND";
    case kHAuthority: return "H_AUTHORITY";
    case kHPermission: return "H_PERMISSION";
    case kHDropped: return "H_DROPPED";
    case kHSourceParm: return "H_SOURCE_PARM";
    case kHDestParm: return "H_DEST_PARM";
    case kHRemoteParm: return "H_REMOTE_PARM";
    case kHResource: return "H_RESOURCE";
    case kHRescinded: return "H_RESCINDED";
    default: return "?";
  }
}

}  // namespace vioport::crq
