// maskflow: declarations only (see ../README.md). The inline `ProcessGroupGloo::setTimeout` names
// `Context::setTimeout`; the shim never calls it.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
