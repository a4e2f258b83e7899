// maskflow: declarations only (see ../../README.md). c10d holds these behind smart pointers.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
