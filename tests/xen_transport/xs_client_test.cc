// SPDX-License-Identifier: Apache-2.0
// ParseDecimal: how the Xen transport reads every number a peer wrote in
// xenstore (untrusted): whole-string decimal, range-checked, no overflow.
#include <gtest/gtest.h>

#include "vioport/transports/xs_client.h"

namespace vioport::xen {
namespace {

TEST(ParseDecimal, AcceptsOnlyWholeDecimalsInRange) {
  EXPECT_EQ(ParseDecimal("0", 5), 0u);
  EXPECT_EQ(ParseDecimal("5", 5), 5u);
  EXPECT_EQ(ParseDecimal("4294967295", 0xffffffff), 0xffffffffu);
  EXPECT_EQ(ParseDecimal("18446744073709551615", ~0ull), ~0ull);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "0x10", "1e3", "abc", "12a"})
    EXPECT_FALSE(ParseDecimal(bad, 1000).has_value()) << "'" << bad << "'";
}

TEST(ParseDecimal, RefusesValuesPastTheMaximum) {
  EXPECT_FALSE(ParseDecimal("6", 5).has_value());
  EXPECT_FALSE(ParseDecimal("99", 1).has_value());  // a digit above a small maximum
  EXPECT_FALSE(ParseDecimal("9", 1).has_value());
  EXPECT_FALSE(ParseDecimal("4294967296", 0xffffffff).has_value());
  EXPECT_FALSE(ParseDecimal("18446744073709551616", ~0ull).has_value());  // wraps 2^64
  EXPECT_FALSE(ParseDecimal("99999999999999999999", ~0ull).has_value());
  EXPECT_FALSE(ParseDecimal("000000000000000000001", 10).has_value());  // longer than 20 digits
}

}  // namespace
}  // namespace vioport::xen
