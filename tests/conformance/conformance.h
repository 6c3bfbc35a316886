// SPDX-License-Identifier: Apache-2.0
// The transport conformance suite: value-parameterized over transport rigs
// (vioport/testing/transport_rig.h), the same cases for every transport.
// A transport joins with one line (transports.cc):
//
//   VIOPORT_CONFORMANCE(Shm, vioport::testing::ShmRig());
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "vioport/testing/process_test.h"
#include "vioport/testing/transport_rig.h"

namespace vioport::conformance {

class Conformance : public testproc::ProcessTest, public ::testing::WithParamInterface<testing::RigFactory> {
 protected:
  Conformance() : ProcessTest("vioport-conf") {}
  void SetUp() override;
  void TearDown() override;

  testing::TransportRig& rig() { return *rig_; }
  const testing::RigTraits& traits() const { return rig_->traits(); }
  // StartChannel + StartDevices, asserted.
  void Start(const std::vector<std::string>& device_specs);
  // A vioguest writing device d0 (a 64 MiB disk) SIGKILLed mid-write.
  void KillGuestMidWrite();

  std::unique_ptr<testing::TransportRig> rig_;
};

// One fixture per suite, so each reads as its own group in the results.
class BlkConformance : public Conformance {};
class RngConformance : public Conformance {};
class ConsoleConformance : public Conformance {};
class HostileConformance : public Conformance {};
class PartnerDeathConformance : public Conformance {};
class CounterConformance : public Conformance {};
class UpgradeConformance : public Conformance {};

inline std::string RigName(const ::testing::TestParamInfo<testing::RigFactory>& info) { return info.param.name; }

}  // namespace vioport::conformance

// Every conformance suite, instantiated for the rig `factory` (a RigFactory).
#define VIOPORT_CONFORMANCE(Name, factory)                                                                       \
  INSTANTIATE_TEST_SUITE_P(Name, BlkConformance, ::testing::Values(factory), RigName);                          \
  INSTANTIATE_TEST_SUITE_P(Name, RngConformance, ::testing::Values(factory), RigName);                          \
  INSTANTIATE_TEST_SUITE_P(Name, ConsoleConformance, ::testing::Values(factory), RigName);                      \
  INSTANTIATE_TEST_SUITE_P(Name, HostileConformance, ::testing::Values(factory), RigName);                      \
  INSTANTIATE_TEST_SUITE_P(Name, PartnerDeathConformance, ::testing::Values(factory), RigName);                 \
  INSTANTIATE_TEST_SUITE_P(Name, CounterConformance, ::testing::Values(factory), RigName);                      \
  INSTANTIATE_TEST_SUITE_P(Name, UpgradeConformance, ::testing::Values(factory), RigName)
